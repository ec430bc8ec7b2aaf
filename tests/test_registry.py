import json

import pytest

from layerprune.errors import LayerpruneError, UnknownNameError
from layerprune.registry import Registry


@pytest.fixture
def reg():
    return Registry("widget")


def test_decorator_registers_under_function_name(reg):
    @reg.register()
    def spanner():
        return "spanner"

    assert reg.get("spanner") is spanner
    assert "spanner" in reg and reg.names() == ["spanner"]


def test_direct_registration_and_alias(reg):
    reg.register("hammer", len, aliases=["mallet"])
    assert reg.get("mallet") is len
    assert reg.canonical("mallet") == "hammer"
    assert reg.aliases("hammer") == ["mallet"]


def test_duplicate_name_is_an_error_unless_same_object(reg):
    reg.register("hammer", len)
    reg.register("hammer", len)  # same object: fine
    with pytest.raises(LayerpruneError, match="'hammer' is already registered"):
        reg.register("hammer", sum)


def test_alias_cannot_shadow_a_name(reg):
    reg.register("hammer", len)
    with pytest.raises(LayerpruneError, match="alias 'hammer' is already taken"):
        reg.register("saw", sum, aliases=["hammer"])


def test_lazy_entry_is_imported_on_first_get(reg):
    reg.register_lazy("dumps", "json:dumps", origin="package")
    assert reg._entries["dumps"].lazy
    assert reg.get("dumps") is json.dumps
    assert not reg._entries["dumps"].lazy
    assert reg.origin("dumps") == "package"


def test_lazy_entry_that_fails_names_entry_and_origin(reg):
    reg.register_lazy("broken", "no_such_module_xyz:thing", origin="file")
    with pytest.raises(LayerpruneError, match=r"widget 'broken' \(origin: file\) failed to load"):
        reg.get("broken")


def test_lazy_target_must_be_module_colon_attr(reg):
    with pytest.raises(LayerpruneError, match="must be 'module:attr'"):
        reg.register_lazy("bad", "json.dumps")


def test_unknown_name_suggests_close_matches_and_lists_known(reg):
    reg.register("hammer", len)
    reg.register("spanner", sum)
    with pytest.raises(UnknownNameError) as info:
        reg.get("hamer")
    message = str(info.value)
    assert "did you mean 'hammer'?" in message
    assert "known: hammer, spanner" in message


def test_unknown_name_without_close_match_still_lists_known(reg):
    reg.register("hammer", len)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'zzz' \(known: hammer\)"):
        reg.get("zzz")


def test_restored_undoes_registrations_and_aliases_made_inside():
    reg = Registry("thing")
    reg.register("kept", 1)
    with reg.restored():
        reg.register("temporary", 2, aliases=["temp"])
        reg.unregister("kept")
        assert reg.names() == ["temporary"]
    assert reg.names() == ["kept"] and "temp" not in reg
