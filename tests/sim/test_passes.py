"""Pass profiles: the Micius 2017 table, the fitted link budget and geometric passes."""

import math

import numpy as np
import pytest
from mozi.sim.errors import MoziError
from mozi.sim.passes import (
    EARTH_RADIUS_KM,
    STATIONS,
    PassProfile,
    UnknownPassError,
    geometric_pass,
    get_pass,
    link_budget,
    link_budget_fit,
    micius2017,
    pass_names,
)


def slant_range(elevation_deg, altitude_km):
    """Distance to a satellite at ``altitude_km`` seen at ``elevation_deg`` (spherical Earth)."""
    r, h, el = EARTH_RADIUS_KM, altitude_km, math.radians(elevation_deg)
    return math.sqrt((r + h) ** 2 - (r * math.cos(el)) ** 2) - r * math.sin(el)


def test_micius2017_matches_published_pass():
    p = micius2017()
    assert p.name == "micius2017"
    assert p.times_s[0] == 0.0 and p.times_s[-1] == pytest.approx(274.0)
    assert np.allclose(np.diff(p.times_s), 0.1)
    assert p.distance_km.min() == pytest.approx(645.0, abs=1.0)
    assert p.distance_km[0] == pytest.approx(1196.3, abs=0.1)
    # closest approach has the least loss, the ends the most (table: 29.8 → 40.3 dB)
    i = int(np.argmin(p.distance_km))
    assert p.loss_db[i] == pytest.approx(29.75, abs=0.3)
    assert 38.0 < p.loss_db[0] < 41.0 and 38.0 < p.loss_db[-1] < 41.0
    assert 45 < p.elevation_deg.max() < 55


def test_interpolation_and_transmittance():
    p = micius2017()
    np.testing.assert_allclose(p.loss_at(p.times_s[::50]), p.loss_db[::50])
    mid = 0.5 * (p.loss_db[10] + p.loss_db[11])
    assert p.loss_at(1.05) == pytest.approx(mid)
    assert p.transmittance_at(1.0) == pytest.approx(10 ** (-p.loss_db[10] / 10))
    assert p.loss_at(-5) == p.loss_db[0] and p.loss_at(1e4) == p.loss_db[-1]


def test_link_budget_is_fitted_to_the_2017_table():
    c, a = link_budget_fit()
    assert a > 0, "the atmosphere must add loss at low elevation"
    p = micius2017()
    resid = link_budget(p.distance_km, p.elevation_deg) - p.loss_db
    assert abs(resid.mean()) < 0.5
    assert np.sqrt((resid ** 2).mean()) < 1.5
    # more air mass at the same distance costs more
    assert link_budget(800.0, 30.0) > link_budget(800.0, 60.0)


def test_stations_include_the_china_russia_pair():
    assert (STATIONS["zvenigorod"].latitude_deg, STATIONS["zvenigorod"].longitude_deg) == \
        (55.70, 36.76)
    assert (STATIONS["nanshan"].latitude_deg, STATIONS["nanshan"].longitude_deg) == \
        (43.47, 87.18)
    assert "xinglong" in STATIONS
    assert set(pass_names()) == {"micius2017", *STATIONS}


@pytest.mark.parametrize("station", ["zvenigorod", "nanshan"])
def test_geometric_pass_geometry(station):
    p = geometric_pass(station, altitude_km=500, elevation_mask_deg=15, max_elevation_deg=55)
    assert p.name == station
    assert p.times_s[0] == 0.0
    assert p.elevation_deg[0] == pytest.approx(15, abs=0.1)
    assert p.elevation_deg[-1] == pytest.approx(15, abs=0.1)
    assert p.elevation_deg.max() == pytest.approx(55, abs=0.05)
    # distance and elevation agree with spherical geometry
    for k in (0, p.times_s.size // 3, int(np.argmax(p.elevation_deg))):
        assert p.distance_km[k] == pytest.approx(slant_range(p.elevation_deg[k], 500), rel=1e-6)
    # a LEO pass above 15 degrees lasts a few minutes
    assert 200 < p.duration_s < 500
    np.testing.assert_allclose(p.loss_db, link_budget(p.distance_km, p.elevation_deg))


def test_geometric_pass_parameters_matter():
    low = geometric_pass("nanshan", max_elevation_deg=30)
    high = geometric_pass("nanshan", max_elevation_deg=80)
    assert low.duration_s < high.duration_s
    assert low.loss_db.min() > high.loss_db.min() + 2
    up = geometric_pass("xinglong", altitude_km=600)
    assert up.distance_km.min() > geometric_pass("xinglong").distance_km.min()


def test_get_pass_names():
    assert get_pass("micius2017").name == "micius2017"
    assert get_pass(" Zvenigorod ").name == "zvenigorod"
    with pytest.raises(UnknownPassError, match="unknown pass 'mars'") as info:
        get_pass("mars")
    assert isinstance(info.value, MoziError)


@pytest.mark.parametrize("kwargs", [
    {"elevation_mask_deg": 40, "max_elevation_deg": 30},
    {"max_elevation_deg": 95},
    {"altitude_km": 50},
])
def test_geometric_pass_rejects_impossible_requests(kwargs):
    with pytest.raises(UnknownPassError):
        geometric_pass("graz", **kwargs)
    with pytest.raises(UnknownPassError, match="unknown station"):
        geometric_pass("atlantis")


def test_profile_validation():
    with pytest.raises(ValueError):
        PassProfile("x", [0, 1, 1], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError):
        PassProfile("x", [0, 1, 2], [1, 2], [1, 2, 3])
    p = PassProfile("x", [0, 1], [700, 800], [30, 31])
    assert p.duration_s == 1.0
    assert not p.loss_db.flags.writeable
    assert p.to_dict()["loss_db"] == [30.0, 31.0]
