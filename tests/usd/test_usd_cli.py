"""``expdiff usd``: validate prints every issue and exits non-zero on errors; plugin-path points at the plugin."""

from __future__ import annotations

import json
from pathlib import Path

from pxr import Sdf

from expdiff_core.cli import main


def test_validate_a_clean_asset_exits_zero(small_published, capsys):
    assert main(["usd", "validate", str(small_published.version_dir.parent)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("ok (0 error(s), 0 warning(s))")


def test_validate_a_broken_asset_prints_each_issue_and_exits_one(broken_copy, capsys):
    layer = Sdf.Layer.FindOrOpen(str(broken_copy))
    layer.GetPrimAtPath("/hero").SetInfo("kind", "group")
    layer.pseudoRoot.ClearInfo("metersPerUnit")
    layer.Save()
    assert main(["usd", "validate", str(broken_copy)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "ERROR   [expdiff:RootKind] /hero: kind is 'group', expected 'component'" in lines
    assert any(line.startswith("ERROR   [expdiff:StageMetadata]") and "metersPerUnit" in line for line in lines)
    assert "FAILED" in lines[-1]


def test_validate_json_lists_the_issues(broken_copy, capsys):
    layer = Sdf.Layer.FindOrOpen(str(broken_copy))
    layer.GetPrimAtPath("/hero").SetInfo("kind", "group")
    layer.Save()
    assert main(["usd", "validate", "--json", str(broken_copy.parent)]) == 1
    issues = json.loads(capsys.readouterr().out)
    assert {"severity": "error", "check": "expdiff:RootKind", "site": "/hero",
            "message": "kind is 'group', expected 'component'"} in issues


def test_strict_turns_warnings_into_failure(broken_copy, capsys):
    layer = Sdf.Layer.FindOrOpen(str(broken_copy.parent / "geo.usdc"))
    layer.GetPrimAtPath("/hero/geo/skel/face/jawOpen").ClearInfo("apiSchemas")
    layer.Save()
    assert main(["usd", "validate", str(broken_copy)]) == 0
    assert main(["usd", "validate", "--strict", str(broken_copy)]) == 1


def test_validate_a_missing_path_is_an_input_error(tmp_path, capsys):
    assert main(["usd", "validate", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_plugin_path_prints_the_folder_holding_plug_info(capsys):
    assert main(["usd", "plugin-path"]) == 0
    assert (Path(capsys.readouterr().out.strip()) / "plugInfo.json").is_file()


def test_checks_lists_td_checks_and_usd_validators(capsys):
    assert main(["usd", "checks"]) == 0
    out = capsys.readouterr().out
    assert "expdiff:UdimTiles" in out and "usdShadeValidators:NormalMapTextureValidator" in out
