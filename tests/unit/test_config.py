import subprocess
import sys

import pytest

from snapkv.common.config import resolve


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fsync: 'no'\nsnapshot_interval: 5\nreplication_factor: 3\n")
    env = {"SNAPKV_FSYNC": "always", "SNAPKV_SNAPSHOT_INTERVAL": "7"}
    s = resolve({"config": str(cfg), "fsync": None, "snapshot_interval": "9"}, env, {})
    assert s.fsync == "always" and s.snapshot_interval == 9.0 and s.replication_factor == 3
    assert resolve({}, {}, {"port": 8081}).port == 8081
    assert resolve({}, {"BROKER_URL": "http://x:1/register"}, {}).broker_url == "http://x:1/register"


@pytest.mark.parametrize(
    "env, word",
    [
        ({"SNAPKV_FSYNC": "sometimes"}, "fsync"),
        ({"SNAPKV_REPLICATION_FACTOR": "5"}, "replication_factor"),
        ({"SNAPKV_PORT": "eighty"}, "port"),
        ({"SNAPKV_ADVERTISE": "nohostport"}, "advertise"),
    ],
)
def test_bad_setting_names_itself(env, word):
    with pytest.raises(ValueError, match=word):
        resolve({}, env, {})


def test_bad_setting_stops_process_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "snapkv.store", "s1", "9999", "--fsync", "sometimes"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "fsync" in lines[0] and "sometimes" in lines[0]


def test_unknown_key_in_config_file_is_rejected(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("fsnyc: always\n")
    with pytest.raises(ValueError, match="fsnyc"):
        resolve({"config": str(cfg)}, {}, {})


def test_a_switch_reads_true_and_false_and_refuses_anything_else():
    assert resolve({}, {"SNAPKV_REBALANCE": "false"}, {}).rebalance is False
    assert resolve({}, {"SNAPKV_REBALANCE": "ON"}, {}).rebalance is True
    assert resolve({}, {}, {}).rebalance is True
    with pytest.raises(ValueError, match="must be true or false"):
        resolve({}, {"SNAPKV_REBALANCE": "maybe"}, {})
