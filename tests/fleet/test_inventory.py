"""The [fleet] table and the miners CSV: shapes accepted, errors name the key (inventory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from poold.errors import ConfigError
from poold.fleet.inventory import Credentials, parse_fleet, rack_ids_of


def table(**over: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "site": "geo-1", "cap_kw": 100.0, "safe_cap_kw": 20.0,
        "grid_signal": {"heartbeat_timeout_s": 60.0},
        "containers": [{"id": "c1", "cap_kw": 80.0}],
        "racks": [{"id": "r1", "container": "c1", "cap_kw": 40.0, "over_cap_allowed_s": 5.0},
                  {"id": "r2", "cap_kw": 40.0}],
        "schedule": [{"start": "17:00", "end": "21:00", "cap_kw": 60.0}],
        "credentials": {"braiins": {"username": "root", "password_env": "BOS_PW"}},
        "miners": [{"id": "m1", "rack": "r1", "position": 1, "host": "10.0.0.1:80",
                    "driver": "braiins", "model": "S19j Pro", "nameplate_w": 3050,
                    "nameplate_ths": 100}],
    }
    t.update(over)
    return t


def test_full_table_parses() -> None:
    cfg = parse_fleet(table(), "poold.toml")
    assert cfg.site == "geo-1" and cfg.cap_kw == 100 and cfg.safe_cap_kw == 20
    assert cfg.grid_heartbeat_timeout_s == 60
    assert cfg.rack("r1").container == "c1" and cfg.rack("r1").over_cap_allowed_s == 5
    assert cfg.rack("r2").over_cap_allowed_s == 10  # inherits the site default
    m = cfg.miners[0]
    assert (m.host, m.port, m.min_w, m.max_w) == ("10.0.0.1", 80, round(3050 * 0.34), 3050)
    assert cfg.schedule[0].start_min == 17 * 60 and cfg.schedule[0].node == "geo-1"
    assert list(rack_ids_of(cfg, "c1")) == ["r1"]
    assert list(rack_ids_of(cfg, "geo-1")) == ["r1", "r2"]


@pytest.mark.parametrize(("over", "key"), [
    ({"cap_kw": -1}, "fleet.cap_kw"),
    ({"safe_cap_kw": 200}, "fleet.safe_cap_kw"),
    ({"racks": [{"id": "r1", "cap_kw": 500}]}, "fleet.racks[0].cap_kw"),
    ({"racks": [{"id": "r1", "container": "c1", "cap_kw": 90}]}, "fleet.racks[0].cap_kw"),
    ({"racks": [{"id": "r1", "container": "nope", "cap_kw": 9}]}, "fleet.racks[0].container"),
    ({"containers": [{"id": "c1", "cap_kw": 101}]}, "fleet.containers[0].cap_kw"),
    ({"racks": [{"id": "r1", "cap_kw": 9}, {"id": "r1", "cap_kw": 9}]}, "fleet.racks[1].id"),
    ({"schedule": [{"start": "25:00", "end": "21:00", "cap_kw": 1}]}, "fleet.schedule[0].start"),
    ({"schedule": [{"start": "01:00", "end": "02:00", "cap_kw": 1, "node": "x"}]},
     "fleet.schedule[0].node"),
    ({"schedule": [{"start": "01:00", "end": "02:00", "cap_kw": 41, "node": "r2"}]},
     "fleet.schedule[0].cap_kw"),
    ({"credentials": {"braiins": {"password": "hunter2"}}}, "fleet.credentials.braiins.password"),
    ({"credentials": {"vnish": {"username": "x"}}}, "fleet.credentials.vnish"),
    ({"bogus": 1}, "fleet.bogus"),
    ({"target_fraction": 1.5}, "fleet.target_fraction"),
    ({"miners": [{"id": "m1", "rack": "r9", "host": "h", "driver": "braiins",
                  "nameplate_w": 1, "nameplate_ths": 1}]}, "fleet.miners[0].rack"),
    ({"miners": [{"id": "m1", "rack": "r1", "host": "h", "driver": "antminer",
                  "nameplate_w": 1, "nameplate_ths": 1}]}, "fleet.miners[0].driver"),
    ({"miners": [{"id": "m1", "rack": "r1", "host": "h", "driver": "luxos",
                  "nameplate_w": 3000, "nameplate_ths": 1, "min_w": 3100}]},
     "fleet.miners[0].min_w"),
])
def test_errors_name_the_key(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_fleet(table(**over), "poold.toml")
    assert exc.value.key == key
    assert exc.value.source == "poold.toml"


def test_secret_never_in_the_error_message() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_fleet(table(credentials={"braiins": {"password": "hunter2"}}), "f")
    assert "hunter2" not in str(exc.value)


def test_miners_csv_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "miners.csv").write_text(
        "id,rack,position,host,driver,model,nameplate_w,nameplate_ths\n"
        "a1,r1,1,10.0.0.5,luxos,S19 XP,3010,140\n"
        "a2,r2,2,10.0.0.6:4433,whatsminer,M60S,3400,170\n")
    cfg = parse_fleet(table(miners=[], miners_csv="miners.csv"), str(tmp_path / "poold.toml"))
    assert [(m.id, m.driver, m.port) for m in cfg.miners] == [
        ("a1", "luxos", None), ("a2", "whatsminer", 4433)]


def test_miners_csv_errors_name_row_and_file(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "id,rack,host,driver,nameplate_w,nameplate_ths\n"
        "a1,r1,10.0.0.5,luxos,3010,140\n"
        "a2,r1,10.0.0.6,luxos,lots,140\n")
    with pytest.raises(ConfigError) as exc:
        parse_fleet(table(miners=[], miners_csv="m.csv"), str(tmp_path / "poold.toml"))
    assert exc.value.key == "fleet.miners_csv[3].nameplate_w"
    assert exc.value.source.endswith("m.csv")
    with pytest.raises(ConfigError) as exc:
        parse_fleet(table(miners_csv="missing.csv"), str(tmp_path / "poold.toml"))
    assert exc.value.key == "fleet.miners_csv"


def test_credentials_resolve_from_env_or_file(tmp_path: Path) -> None:
    assert Credentials("root", password_env="PW").resolve({"PW": "s3"}) == ("root", "s3")
    f = tmp_path / "pw"
    f.write_text("s4\n")
    assert Credentials("root", password_file=str(f)).resolve({}) == ("root", "s4")
    with pytest.raises(ConfigError):
        Credentials("root", password_env="NOPE").resolve({})
    assert "s3" not in repr(parse_fleet(table(), "f"))


def test_build_drivers_with_site_credentials_never_in_reprs() -> None:
    from poold.fleet.drivers import build_drivers
    from poold.fleet.drivers.braiins import BraiinsDriver

    cfg = parse_fleet(table(), "poold.toml")
    drivers = build_drivers(cfg, {"BOS_PW": "s3cret"})
    d = drivers["m1"]
    assert isinstance(d, BraiinsDriver) and (d.host, d.port) == ("10.0.0.1", 80)
    assert "s3cret" not in repr(d) and "s3cret" not in repr(vars(d))
    with pytest.raises(ConfigError):
        build_drivers(cfg, {})  # the env var named in the config is missing
