"""Satellite pass profiles: distance and link loss versus time.

Two sources of passes:

* :func:`micius2017` — the published Micius pass over Xinglong (Liao et al., Nature 549,
  43–47, 2017): satellite–station distance versus time and total link loss versus distance,
  shipped as package data (``mozi.sim.data``, Apache-2.0, see ``sim/data/README.md``);
* :func:`geometric_pass` — a circular-orbit pass over any ground station of :data:`STATIONS`,
  with the loss from a link budget fitted to the 2017 table
  (``loss = 20·log10(d) + C + A / sin(elevation)``: diffraction/geometric spreading, a constant
  for the telescopes and optics, and an atmospheric term proportional to the air mass).

:func:`get_pass` resolves a name (``"micius2017"`` or a station) to a :class:`PassProfile`.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import math
from dataclasses import dataclass, field

import numpy as np
from mozi.sim.errors import MoziError

__all__ = [
    "EARTH_RADIUS_KM",
    "MICIUS_ALTITUDE_KM",
    "STATIONS",
    "PassProfile",
    "Station",
    "UnknownPassError",
    "geometric_pass",
    "get_pass",
    "link_budget",
    "link_budget_fit",
    "micius2017",
    "pass_names",
]

EARTH_RADIUS_KM = 6371.0
#: Mean orbit altitude of Micius, used to turn the 2017 table's distances into elevations.
MICIUS_ALTITUDE_KM = 500.0
_EARTH_RATE = 7.2921159e-5  # rad/s, sidereal rotation
_MU_EARTH = 398600.4418     # km^3/s^2


class UnknownPassError(MoziError):
    """The pass name is neither ``micius2017`` nor a known ground station."""


@dataclass(frozen=True)
class Station:
    """A ground station.

    Attributes
    ----------
    name : str
    latitude_deg, longitude_deg : float
        Geodetic position (north and east positive), on a spherical Earth.
    """

    name: str
    latitude_deg: float
    longitude_deg: float


#: Ground stations with a name :func:`get_pass` accepts.
STATIONS: dict[str, Station] = {
    s.name: s for s in (
        Station("xinglong", 40.3956, 117.5750),    # Xinglong observatory (Micius 2017 QKD)
        Station("zvenigorod", 55.70, 36.76),       # near Moscow (China–Russia experiment)
        Station("nanshan", 43.47, 87.18),          # near Urumqi (China–Russia experiment)
        Station("graz", 47.0675, 15.4933),         # Graz (Micius intercontinental QKD)
    )
}


@dataclass(frozen=True, eq=False)
class PassProfile:
    """One satellite pass: distance and total link loss sampled in time.

    Attributes
    ----------
    name : str
        ``"micius2017"`` or the station name.
    times_s : float64 array
        Strictly increasing sample times; 0 is the start of the pass.
    distance_km : float64 array
        Satellite–station distance at each time.
    loss_db : float64 array
        Total link loss (source output to the receiver's detector box, excluding detector
        efficiency) at each time.
    elevation_deg : float64 array or None
        Elevation of the satellite seen from the station, when known.
    """

    name: str
    times_s: np.ndarray
    distance_km: np.ndarray
    loss_db: np.ndarray
    elevation_deg: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        arrays = {}
        for key in ("times_s", "distance_km", "loss_db", "elevation_deg"):
            value = getattr(self, key)
            if value is None:
                continue
            a = np.array(value, dtype=np.float64)
            a.setflags(write=False)
            arrays[key] = a
            object.__setattr__(self, key, a)
        n = arrays["times_s"].shape
        if len(n) != 1 or n[0] < 2:
            raise ValueError("times_s must be a 1-D array of at least two samples")
        if any(a.shape != n for a in arrays.values()):
            raise ValueError("all pass arrays must have the same length")
        if np.any(np.diff(arrays["times_s"]) <= 0):
            raise ValueError("times_s must be strictly increasing")

    @property
    def duration_s(self) -> float:
        """Time from the first to the last sample."""
        return float(self.times_s[-1] - self.times_s[0])

    def loss_at(self, t_s) -> np.ndarray:
        """Link loss in dB at time(s) ``t_s`` (linear interpolation, clamped at the ends)."""
        return np.interp(t_s, self.times_s, self.loss_db)

    def distance_at(self, t_s) -> np.ndarray:
        """Satellite–station distance in km at time(s) ``t_s`` (linear interpolation)."""
        return np.interp(t_s, self.times_s, self.distance_km)

    def transmittance_at(self, t_s) -> np.ndarray:
        """Link transmittance ``10**(-loss/10)`` at time(s) ``t_s``."""
        return 10.0 ** (-self.loss_at(t_s) / 10.0)

    def to_dict(self) -> dict:
        """Short JSON-able description (name, duration, distance and loss ranges)."""
        return {
            "name": self.name,
            "duration_s": round(self.duration_s, 3),
            "distance_km": [round(float(self.distance_km.min()), 1),
                            round(float(self.distance_km.max()), 1)],
            "loss_db": [round(float(self.loss_db.min()), 2),
                        round(float(self.loss_db.max()), 2)],
        }


def _read_table(name: str) -> np.ndarray:
    text = importlib.resources.files("mozi.sim.data").joinpath(name).read_text("utf-8")
    return np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.float64)


@functools.cache
def _micius_tables() -> tuple[np.ndarray, np.ndarray]:
    return _read_table("track.csv"), _read_table("link_efficiency.csv")


def _elevation_from_distance(d_km, altitude_km: float) -> np.ndarray:
    """Elevation (rad) of a satellite at ``altitude_km`` seen at slant range ``d_km``."""
    r, h = EARTH_RADIUS_KM, altitude_km
    d = np.asarray(d_km, np.float64)
    s = ((r + h) ** 2 - r ** 2 - d ** 2) / (2.0 * r * d)
    return np.arcsin(np.clip(s, -1.0, 1.0))


def micius2017() -> PassProfile:
    """The Micius pass over Xinglong of the 2017 satellite-to-ground QKD experiment.

    Distance versus time comes from ``track.csv`` (0–274 s, 0.1 s steps); the loss at each
    time is the ``link_efficiency.csv`` loss-versus-distance table interpolated at that
    distance. Elevations are derived assuming a 500-km circular orbit.

    Returns
    -------
    PassProfile
        Named ``"micius2017"``.
    """
    track, loss = _micius_tables()
    t, d = track[:, 0], track[:, 1]
    order = np.argsort(loss[:, 0])
    loss_db = np.interp(d, loss[order, 0], loss[order, 1])
    el = np.degrees(_elevation_from_distance(d, MICIUS_ALTITUDE_KM))
    return PassProfile("micius2017", t, d, loss_db, el)


@functools.cache
def link_budget_fit() -> tuple[float, float]:
    """Fit ``loss - 20·log10(d) = C + A / sin(el)`` to the 2017 loss table.

    Returns
    -------
    C : float
        Constant term in dB (telescope apertures, optics, pointing), with ``d`` in km.
    A : float
        Atmospheric loss in dB per air mass (zenith attenuation).
    """
    _, loss = _micius_tables()
    d, y = loss[:, 0], loss[:, 1] - 20.0 * np.log10(loss[:, 0])
    airmass = 1.0 / np.sin(_elevation_from_distance(d, MICIUS_ALTITUDE_KM))
    design = np.column_stack([np.ones_like(d), airmass])
    (c, a), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(c), float(a)


def link_budget(distance_km, elevation_deg) -> np.ndarray:
    """Total link loss (dB) from the budget calibrated by :func:`link_budget_fit`."""
    c, a = link_budget_fit()
    el = np.radians(np.asarray(elevation_deg, np.float64))
    return 20.0 * np.log10(np.asarray(distance_km, np.float64)) + c + a / np.sin(el)


def _pass_track(lat, lon, altitude_km, inclination, descending, dlon, t):
    """Distance and elevation over times ``t`` (s) for one orbit geometry.

    At ``t = 0`` the satellite's sub-point is at the station's latitude and ``dlon`` radians
    east of it (Earth-fixed frame at t = 0 coincides with the inertial frame).
    """
    a = EARTH_RADIUS_KM + altitude_km
    n = math.sqrt(_MU_EARTH / a ** 3)
    s = math.sin(lat) / math.sin(inclination)
    if abs(s) > 1.0:
        raise UnknownPassError("orbit inclination too low to reach the station latitude")
    u0 = math.asin(s)
    if descending:
        u0 = math.pi - u0
    # longitude of the sub-point relative to the ascending node at t = 0
    lam = math.atan2(math.cos(inclination) * math.sin(u0), math.cos(u0))
    raan = lon + dlon - lam
    u = u0 + n * t
    ci, si = math.cos(inclination), math.sin(inclination)
    co, so = math.cos(raan), math.sin(raan)
    sat = a * np.stack([
        co * np.cos(u) - so * ci * np.sin(u),
        so * np.cos(u) + co * ci * np.sin(u),
        si * np.sin(u),
    ])
    theta = lon + _EARTH_RATE * t
    up = np.stack([math.cos(lat) * np.cos(theta), math.cos(lat) * np.sin(theta),
                   np.full_like(t, math.sin(lat))])
    rel = sat - EARTH_RADIUS_KM * up
    dist = np.sqrt((rel ** 2).sum(axis=0))
    el = np.arcsin(np.clip((rel * up).sum(axis=0) / dist, -1.0, 1.0))
    return dist, el


def geometric_pass(
    station: str,
    *,
    altitude_km: float = 500.0,
    elevation_mask_deg: float = 10.0,
    max_elevation_deg: float = 60.0,
    inclination_deg: float = 97.4,
    descending: bool = True,
    step_s: float = 0.1,
) -> PassProfile:
    """A pass of a satellite in a circular orbit over a ground station.

    The orbit (inclination ``inclination_deg``, Micius's sun-synchronous 97.4° by default) is
    placed so that the pass culminates at ``max_elevation_deg``; the Earth rotates under it.
    The pass runs while the satellite is above ``elevation_mask_deg``; time 0 is the rise
    above the mask. Loss comes from :func:`link_budget` (fitted to the 2017 table).

    Parameters
    ----------
    station : str
        A key of :data:`STATIONS` (case-insensitive).
    altitude_km : float
        Orbit altitude.
    elevation_mask_deg : float
        Lowest elevation at which the link runs (10–15° is typical).
    max_elevation_deg : float
        Culmination elevation of this pass (must exceed the mask, at most 89.9°).
    inclination_deg : float
        Orbit inclination.
    descending : bool
        Southbound (night-time for Micius's dawn–dusk orbit) or northbound pass.
    step_s : float
        Sampling step of the profile.

    Returns
    -------
    PassProfile
        Named after the station.

    Raises
    ------
    UnknownPassError
        Unknown station, or a geometry that cannot produce the requested pass.
    """
    st = STATIONS.get(station.lower())
    if st is None:
        raise UnknownPassError(f"unknown station {station!r} (known: {', '.join(STATIONS)})")
    if not 0.0 <= elevation_mask_deg < max_elevation_deg <= 89.9:
        raise UnknownPassError("need 0 <= elevation mask < max elevation <= 89.9 degrees")
    if altitude_km <= 100.0 or step_s <= 0.0:
        raise UnknownPassError("altitude must exceed 100 km and step_s must be positive")
    lat, lon = math.radians(st.latitude_deg), math.radians(st.longitude_deg)
    inc = math.radians(inclination_deg)
    t = np.arange(-900.0, 900.0 + step_s / 2, step_s)
    t_coarse = np.arange(-900.0, 900.5, 1.0)
    target = math.radians(max_elevation_deg)

    def peak(dlon: float) -> float:
        # coarse 1-s grid, refined around its maximum
        el = _pass_track(lat, lon, altitude_km, inc, descending, dlon, t_coarse)[1]
        k = int(np.argmax(el))
        fine = np.linspace(t_coarse[max(k - 1, 0)], t_coarse[min(k + 1, t_coarse.size - 1)], 201)
        return float(_pass_track(lat, lon, altitude_km, inc, descending, dlon, fine)[1].max())

    # the overhead crossing (coarse scan), then bisection on the longitude offset east of it,
    # where the peak elevation falls monotonically
    scan = np.radians(np.arange(-25.0, 25.01, 0.25))
    peaks = np.array([peak(x) for x in scan])
    lo = float(scan[int(np.argmax(peaks))])
    hi = lo + math.radians(25.0)
    if peak(lo) < target or peak(hi) >= target:
        raise UnknownPassError("requested max elevation not reachable")
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if peak(mid) >= target:
            lo = mid
        else:
            hi = mid
    dist, el = _pass_track(lat, lon, altitude_km, inc, descending, lo, t)
    above = np.flatnonzero(el >= math.radians(elevation_mask_deg))
    if above.size < 2 or above[0] == 0 or above[-1] == t.size - 1:
        raise UnknownPassError("the pass does not fit the simulated window")
    sl = slice(above[0], above[-1] + 1)
    times = t[sl] - t[above[0]]
    el_deg = np.degrees(el[sl])
    return PassProfile(st.name, times, dist[sl], link_budget(dist[sl], el_deg), el_deg)


def pass_names() -> tuple[str, ...]:
    """Every name :func:`get_pass` accepts."""
    return ("micius2017", *STATIONS)


def get_pass(name: str) -> PassProfile:
    """Resolve a pass name: ``"micius2017"`` or a station of :data:`STATIONS`.

    Raises
    ------
    UnknownPassError
        The name is neither.
    """
    key = name.strip().lower()
    if key == "micius2017":
        return micius2017()
    if key in STATIONS:
        return geometric_pass(key)
    raise UnknownPassError(f"unknown pass {name!r} (choose from {', '.join(pass_names())})")
