"""Settings: defaults, precedence (CLI > env > config file > defaults) and clear rejection of bad values."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import host_baseline
from pydantic import ValidationError

from driftd.baselines.loader import load_set
from driftd.cli import _settings, main, parser
from driftd.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DRIFTD_* variable of the calling shell leaks into these tests."""
    for k in list(os.environ):
        if k.startswith("DRIFTD_") or k == "NODE_NAME":
            monkeypatch.delenv(k)


def config(tmp_path: Path, text: str, name: str = "driftd.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def locs(e: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {".".join(str(p) for p in err["loc"]): err["msg"] for err in e.value.errors()}


class TestDefaults:
    def test_documented_defaults(self):
        """With no file, env or flags: 300 s scans with 30 s jitter, HTTP on 127.0.0.1:9808, auto logs."""
        s = load_settings()
        assert s.scan.interval_seconds == 300.0
        assert s.scan.jitter_seconds == 30.0
        assert s.scan.full_rehash_interval_seconds == 3600.0
        assert s.http.address == "127.0.0.1:9808"
        assert s.http.host_port == ("127.0.0.1", 9808)
        assert (s.log.format, s.log.level) == ("auto", "info")
        assert (s.host_root, s.baselines, s.state_dir) == (Path("/"), Path("/etc/driftd/baselines"), Path("/var/lib/driftd"))
        assert s.dry_run is False
        assert s.workers == 2
        assert s.reload_interval_seconds == 10.0
        assert s.baseline_file_max_bytes == 8 * 1024 * 1024
        assert (s.retry.base_seconds, s.retry.max_seconds, s.retry.attempts_per_pass, s.retry.escalate_after) == (
            1.0, 300.0, 4, 3)

    def test_window_default_lives_in_baselines_not_settings(self, baselines_dir):
        """The 30-minute remediation window is a baseline default; it is not a daemon setting."""
        bset, problems = load_set(baselines_dir({"b.yaml": host_baseline(spec="""
            files:
              - {path: /etc/motd, content: "x"}
        """)}))
        assert bset is not None, problems
        assert bset.baselines[0].spec.window == timedelta(minutes=30)
        assert "window" not in Settings.model_fields
        with pytest.raises(ValidationError) as e:
            load_settings(window="10m")
        assert "window" in locs(e)

    def test_node_name_resolution(self, tmp_path, monkeypatch):
        """Node name: the setting, else $NODE_NAME, else <host-root>/etc/hostname."""
        root = tmp_path / "host"
        (root / "etc").mkdir(parents=True)
        (root / "etc/hostname").write_text("from-file\n")
        assert load_settings(host_root=root).resolved_node_name() == "from-file"
        monkeypatch.setenv("NODE_NAME", "from-env")
        assert load_settings(host_root=root).resolved_node_name() == "from-env"
        assert load_settings(host_root=root, node_name="from-flag").resolved_node_name() == "from-flag"


class TestPrecedence:
    def test_config_file_sets_values(self, tmp_path):
        """Values in the YAML config file override the defaults (top-level keys may use dashes)."""
        cfg = config(tmp_path, "dry-run: true\nscan:\n  interval_seconds: 60\n  jitter_seconds: 5\nworkers: 4\n")
        s = load_settings(cfg)
        assert (s.scan.interval_seconds, s.scan.jitter_seconds, s.workers, s.dry_run) == (60.0, 5.0, 4, True)

    def test_env_overrides_config_file(self, tmp_path, monkeypatch):
        """DRIFTD_SCAN__INTERVAL_SECONDS beats the file; the file's other keys in that section still apply."""
        cfg = config(tmp_path, "scan:\n  interval_seconds: 60\n  jitter_seconds: 5\ndry_run: true\n")
        monkeypatch.setenv("DRIFTD_SCAN__INTERVAL_SECONDS", "120")
        monkeypatch.setenv("DRIFTD_DRY_RUN", "false")
        s = load_settings(cfg)
        assert s.scan.interval_seconds == 120.0
        assert s.scan.jitter_seconds == 5.0
        assert s.dry_run is False

    def test_cli_overrides_env_and_file(self, tmp_path, monkeypatch):
        """A CLI value (passed as a nested override, as driftd/cli.py does) beats env and file, key by key."""
        cfg = config(tmp_path, "scan:\n  interval_seconds: 60\n  jitter_seconds: 5\n")
        monkeypatch.setenv("DRIFTD_SCAN__INTERVAL_SECONDS", "120")
        monkeypatch.setenv("DRIFTD_SCAN__FULL_REHASH_INTERVAL_SECONDS", "7")
        s = load_settings(cfg, scan={"interval_seconds": 30})
        assert s.scan.interval_seconds == 30.0
        assert s.scan.jitter_seconds == 5.0  # from the file
        assert s.scan.full_rehash_interval_seconds == 7.0  # from the env

    def test_cli_parser_flags_map_onto_settings(self, tmp_path, monkeypatch):
        """`driftd run --interval/--listen/--log-format --config` land in the right settings over env and file."""
        cfg = config(tmp_path, "http:\n  address: 127.0.0.1:1111\nlog:\n  level: debug\n")
        monkeypatch.setenv("DRIFTD_SCAN__INTERVAL_SECONDS", "120")
        monkeypatch.setenv("DRIFTD_HTTP__ADDRESS", "127.0.0.1:2222")
        args = parser().parse_args(["run", "--config", cfg, "--interval", "15", "--listen", "127.0.0.1:3333",
                                    "--log-format", "json", "--state-dir", str(tmp_path / "st")])
        s = _settings(args)
        assert s.scan.interval_seconds == 15.0
        assert s.http.host_port == ("127.0.0.1", 3333)
        assert (s.log.format, s.log.level) == ("json", "debug")
        assert s.state_dir == tmp_path / "st"
        assert s.dry_run is False  # an absent --dry-run flag does not override anything
        s = _settings(parser().parse_args(["run", "--config", cfg]))
        assert (s.scan.interval_seconds, s.http.address) == (120.0, "127.0.0.1:2222")

    def test_config_from_env_variable_and_not_sticky(self, tmp_path, monkeypatch):
        """DRIFTD_CONFIG names the file when none is passed; a file passed once is not reused by later loads."""
        cfg = config(tmp_path, "workers: 7\n")
        assert load_settings(cfg).workers == 7
        assert load_settings().workers == 2
        monkeypatch.setenv("DRIFTD_CONFIG", cfg)
        assert load_settings().workers == 7


    def test_env_json_for_lists_mappings_and_sections(self, monkeypatch):
        """A list, mapping or whole section comes from the environment as JSON; its keys merge with __ variables."""
        monkeypatch.setenv("DRIFTD_NODE_LABELS", '{"zone": "a", "tier": "web"}')
        monkeypatch.setenv("DRIFTD_RETIRE_HOOK", '["/usr/local/bin/retire", "--now"]')
        monkeypatch.setenv("DRIFTD_SCAN", '{"interval_seconds": 60, "jitter_seconds": 5}')
        monkeypatch.setenv("DRIFTD_SCAN__JITTER_SECONDS", "9")
        monkeypatch.setenv("driftd_workers", "3")  # names are case-insensitive
        monkeypatch.setenv("DRIFTD_NOT_A_SETTING", "x")  # no such top-level setting: not read
        s = load_settings()
        assert s.node_labels == {"zone": "a", "tier": "web"}
        assert s.retire_hook == ["/usr/local/bin/retire", "--now"]
        assert (s.scan.interval_seconds, s.scan.jitter_seconds, s.workers) == (60.0, 9.0, 3)

    def test_env_string_settings_are_taken_verbatim(self, monkeypatch):
        """A string setting is never JSON-decoded: a value that looks like JSON stays what it says."""
        monkeypatch.setenv("DRIFTD_NODE_NAME", '["not", "a", "list"]')
        assert load_settings().node_name == '["not", "a", "list"]'

    def test_bad_env_json_and_unknown_section_key_are_usage_errors(self, tmp_path, monkeypatch, capsys):
        """Invalid JSON names the variable; an unknown key inside a section names the setting (exit 2 both)."""
        monkeypatch.setenv("DRIFTD_NODE_LABELS", "zone=a")
        with pytest.raises(SystemExit) as e:
            _settings(parser().parse_args(["run", "--state-dir", str(tmp_path)]))
        assert e.value.code == 2
        assert "DRIFTD_NODE_LABELS" in capsys.readouterr().err
        monkeypatch.delenv("DRIFTD_NODE_LABELS")
        monkeypatch.setenv("DRIFTD_SCAN__INTERVALL", "5")
        with pytest.raises(ValidationError) as v:
            load_settings()
        assert locs(v) == {"scan.intervall": "Extra inputs are not permitted"}

    def test_the_settings_root_imports_no_settings_framework(self):
        """Building the settings imports neither pydantic-settings (asyncio, dotenv: ~75 ms a start) nor yaml without a file."""
        import subprocess
        import sys

        code = ("import sys; from driftd.settings import load_settings; load_settings(); "
                "print(sorted(m for m in ('pydantic_settings', 'dotenv', 'yaml') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={k: v for k, v in os.environ.items() if not k.startswith("DRIFTD_")})
        assert out.stdout.strip() == "[]"


class TestRejection:
    def test_unknown_top_level_key_in_config_file(self, tmp_path):
        """A typo at the top of the config file is rejected, naming the key."""
        with pytest.raises(ValidationError) as e:
            load_settings(config(tmp_path, "intervall: 5\n"))
        assert locs(e) == {"intervall": "Extra inputs are not permitted"}

    def test_unknown_nested_key_in_config_file(self, tmp_path):
        """A typo inside a section is rejected with its dotted path."""
        with pytest.raises(ValidationError) as e:
            load_settings(config(tmp_path, "scan:\n  intervall_seconds: 5\n"))
        assert locs(e) == {"scan.intervall_seconds": "Extra inputs are not permitted"}

    def test_unknown_key_via_cli_is_a_usage_error(self, tmp_path, capsys):
        """The CLI prints 'driftd: setting KEY: reason' and exits 2 for an unknown config key, without a traceback."""
        cfg = config(tmp_path, "scan:\n  intervall_seconds: 5\n")
        with pytest.raises(SystemExit) as e:
            main(["status", "--config", cfg, "--state-dir", str(tmp_path / "st")])
        assert e.value.code == 2
        assert capsys.readouterr().err == "driftd: setting scan.intervall_seconds: Extra inputs are not permitted\n"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("- a\n- b\n", "config file must be a mapping"),
            ("scan: [unclosed\n", "config file is not valid YAML"),
        ],
    )
    def test_malformed_config_file_is_a_usage_error(self, tmp_path, capsys, text, expected):
        """A config file that is not a YAML mapping is reported on one line with exit 2, no traceback."""
        cfg = config(tmp_path, text)
        with pytest.raises(SystemExit) as e:
            main(["status", "--config", cfg, "--state-dir", str(tmp_path / "st")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"driftd: {cfg}: {expected}")
        assert "Traceback" not in err

    def test_missing_config_file_is_a_usage_error(self, tmp_path, capsys):
        """A --config path that does not exist is a usage error naming the file."""
        with pytest.raises(SystemExit) as e:
            main(["status", "--config", str(tmp_path / "nope.yaml"), "--state-dir", str(tmp_path / "st")])
        assert e.value.code == 2
        assert "nope.yaml" in capsys.readouterr().err

    @pytest.mark.parametrize("address", ["localhost", "127.0.0.1:", ":9808", "127.0.0.1:http", "127.0.0.1:65536",
                                         "127.0.0.1:-1"])
    def test_invalid_address_rejected(self, address):
        """An HTTP address that is not host:port with a port in 0..65535 is rejected with the expected form."""
        with pytest.raises(ValidationError) as e:
            load_settings(http={"address": address})
        assert "address must be host:port, e.g. 127.0.0.1:9808" in locs(e)["http.address"]

    def test_invalid_address_from_env_and_cli(self, tmp_path, monkeypatch, capsys):
        """A bad DRIFTD_HTTP__ADDRESS or --listen is a usage error (exit 2) naming http.address."""
        monkeypatch.setenv("DRIFTD_HTTP__ADDRESS", "nowhere")
        with pytest.raises(ValidationError):
            load_settings()
        monkeypatch.delenv("DRIFTD_HTTP__ADDRESS")
        with pytest.raises(SystemExit) as e:
            main(["run", "--once", "--listen", "9808", "--state-dir", str(tmp_path / "st")])
        assert e.value.code == 2
        assert capsys.readouterr().err.startswith("driftd: setting http.address: ")

    def test_ipv6_address_accepted(self):
        """A bracketed IPv6 loopback address is split into host and port."""
        assert load_settings(http={"address": "[::1]:9808"}).http.host_port == ("::1", 9808)

    @pytest.mark.parametrize(
        ("env", "value", "field"),
        [
            ("DRIFTD_SCAN__INTERVAL_SECONDS", "0", "scan.interval_seconds"),
            ("DRIFTD_SCAN__INTERVAL_SECONDS", "soon", "scan.interval_seconds"),
            ("DRIFTD_SCAN__JITTER_SECONDS", "-1", "scan.jitter_seconds"),
            ("DRIFTD_WORKERS", "0", "workers"),
            ("DRIFTD_LOG__FORMAT", "xml", "log.format"),
        ],
    )
    def test_out_of_range_values_rejected(self, monkeypatch, env, value, field):
        """Non-positive intervals, negative jitter, zero workers and unknown log formats are rejected by name."""
        monkeypatch.setenv(env, value)
        with pytest.raises(ValidationError) as e:
            load_settings()
        assert field in locs(e)
