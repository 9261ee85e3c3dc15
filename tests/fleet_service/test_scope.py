"""RegionScope's single-object checks: paths compared with their separator."""

from __future__ import annotations

from fleet_service.scope import RegionScope, normalised_path


def test_a_path_is_compared_with_its_separator() -> None:
    district = RegionScope("/1/2")  # given without the trailing separator: it is added
    assert district.path == "/1/2/" and normalised_path("1/23") == "/1/23/"
    assert district.contains("/1/2/") and district.contains("/1/2/3/4/")
    assert not district.contains("/1/23/") and not district.contains("/1/23/24/")
    assert not district.contains("/1/") and not district.contains(None)
    assert district.region_ids_on_path() == [1, 2]


def test_the_whole_fleet_holds_everything_even_what_has_no_region() -> None:
    fleet = RegionScope.of(None)
    assert fleet.whole_fleet and not fleet.restricted
    assert fleet.contains("/1/23/") and fleet.contains(None)
    assert RegionScope("/1/2/").within(fleet) and not fleet.within(RegionScope("/1/"))
    assert RegionScope("/1/2/3/").within("/1/2/") and not RegionScope("/1/23/").within("/1/2/")
