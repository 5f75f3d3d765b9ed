"""Crash safety of the nodes: either node killed with SIGKILL at one of 26 points of a session
or of the relay, then restarted for the link's next session.

After each kill and the next session: no key waits staged at either end; both ends of every
link hold the same blocks (IDs, senders, sizes, states, bits); the killed session's key is at
both ends or at neither (at both exactly when the satellite committed it before the kill);
the two authentication pools are in step; an interrupted relay is finished, with Moscow and
Urumqi holding the same relayed key.

Points are ``send[:KIND][#k]`` / ``recv[:KIND][#k]`` (the ``k``-th frame, or the ``k``-th of
one kind, a node sends or receives: :mod:`mozi.host.nodes.wire`) and the named storage steps
of :mod:`mozi.host.postprocessing.session`, :mod:`mozi.host.nodes.station` and
:mod:`mozi.host.nodes.satellite`.
"""

import pytest
from mozi.host.keys.keystore import KeyStore

from tests.host.nodes import StationProcess, key_rows, report, run_satellite, write_passes

# (node killed, crash point, does the killed session's key survive?)
SESSION_POINTS = [
    ("station", "recv#1", False),                      # the satellite's open frame
    ("station", "recv:pass-start", False),
    ("station", "send:pass-accept", False),
    ("station", "recv:align-shift", False),
    ("station", "send:sift-report", False),
    ("station", "send:public#40", False),              # a Cascade query
    ("station", "recv:public#200", False),             # a Cascade answer
    ("station", "send:cascade-end", False),
    ("station", "recv:pa-seed", False),
    ("station", "bob-staged", False),
    ("station", "recv:committed", True),
    ("station", "bob-confirmed", True),
    ("satellite", "send#1", False),
    ("satellite", "recv:pass-accept", False),
    ("satellite", "send:sift-flags", False),
    ("satellite", "recv:public#100", False),
    ("satellite", "send:cascade-answers", False),
    ("satellite", "send:key-ids", False),
    ("satellite", "recv:stored", False),
    ("satellite", "alice-before-commit", False),
    ("satellite", "alice-committed", True),
    ("satellite", "send:committed", True),
]

# (node killed, crash point): the sessions complete, the relay is interrupted
RELAY_POINTS = [
    ("satellite", "satellite-announced"),
    ("satellite", "send:relay#2"),                     # delivered to Moscow, not yet Urumqi
    ("station", "station-relayed"),
    ("station", "send:relay-accepted"),
]


@pytest.fixture(scope="module")
def pass_files(tmp_path_factory):
    return write_passes(tmp_path_factory.mktemp("passes"))


def _stores(folder, stations):
    from tests.host.nodes import make_stores
    return make_stores(folder, stations)


def _check_link(paths, station):
    """Both ends agree on link ``sat-station``: no staged key, same blocks, pools in step."""
    link = f"sat-{station}"
    with KeyStore(paths["satellite"]) as a, KeyStore(paths[station]) as b:
        assert a.staged_sessions(link) == [] == b.staged_sessions(link)
        sa, sb = a.auth_status()[link], b.auth_status()[link]
        assert (sa["pad_bits"], sa["added_bits"]) == (sb["pad_bits"], sb["added_bits"])
    rows = key_rows(paths["satellite"], link)
    assert rows == key_rows(paths[station], link)
    return {r[0] for r in rows}


def _run(paths, stations, pass_files, index, *, relay, crash=None):
    return run_satellite(paths["satellite"], [s.address for s in stations.values()],
                         [(name, pass_files[name][index][1]) for name in stations],
                         relay=("moscow", "urumqi") if relay else None, crash=crash)


def _start(paths, names, pass_files, crash=None):
    return {n: StationProcess(n, paths[n], [t for t, _ in pass_files[n]],
                              crash=crash if n == "moscow" else None) for n in names}


def _crash_then_next_session(pass_files, tmp_path, who, point, *, relay):
    names = ("moscow", "urumqi") if relay else ("moscow",)
    paths = _stores(tmp_path, names)
    stations = _start(paths, names, pass_files, crash=point if who == "station" else None)
    try:
        first = _run(paths, stations, pass_files, 0, relay=relay,
                     crash=point if who == "satellite" else None)
        if who == "satellite":
            assert first.returncode == -9, (point, first.returncode, first.stderr)
        else:
            assert stations["moscow"].proc.wait(30) == -9, point
            stations["moscow"] = StationProcess("moscow", paths["moscow"],
                                                [t for t, _ in pass_files["moscow"]])
        second = report(_run(paths, stations, pass_files, 1, relay=relay))
    finally:
        for s in stations.values():
            s.stop()
    for s in second["sessions"]:
        assert not s["aborted"], (point, s["abort_reason"])
    return paths, first, second


@pytest.mark.parametrize(("who", "point", "survives"), SESSION_POINTS,
                         ids=[f"{w}-{p}" for w, p, _ in SESSION_POINTS])
def test_a_session_survives_sigkill(pass_files, tmp_path, who, point, survives):
    paths, first, second = _crash_then_next_session(pass_files, tmp_path, who, point,
                                                    relay=False)
    if who == "station":    # the satellite finished its half exactly when it committed
        assert (first.returncode == 0) == survives, (point, first.returncode, first.stderr)
    ids = _check_link(paths, "moscow")
    new = set(second["sessions"][0]["key_ids"])
    assert new <= ids
    # the killed session's key: all of it at both ends, or none of it at either
    with KeyStore(paths["satellite"]) as sat:
        killed = [s for s in sat.sessions("sat-moscow")][0]
    assert killed["state"] == ("committed" if survives else "aborted"), (point, killed)
    assert (len(ids - new) > 0) == survives, point


@pytest.mark.parametrize(("who", "point"), RELAY_POINTS,
                         ids=[f"{w}-{p}" for w, p in RELAY_POINTS])
def test_an_interrupted_relay_is_finished(pass_files, tmp_path, who, point):
    paths, _, second = _crash_then_next_session(pass_files, tmp_path, who, point, relay=True)
    for station in ("moscow", "urumqi"):
        _check_link(paths, station)
    relay = second["relay"]
    assert relay["resumed"], point
    moscow, urumqi = (key_rows(paths[st], "moscow-urumqi") for st in ("moscow", "urumqi"))
    assert moscow == urumqi and sorted(r[0] for r in moscow) == sorted(relay["key_ids"])
    assert sum(r[2] for r in moscow) == relay["n_bits"]
    with KeyStore(paths["satellite"]) as sat:
        assert sat.outbox() == []
