"""Issue 15 item 15: no display or a missing Qt library is one line and exit 2, not Qt's abort."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from studio import preflight

ROOT = Path(__file__).resolve().parent.parent


def loads_all_but(*missing: str):
    return lambda name: name not in missing


def test_missing_xcb_libraries_name_their_debian_packages():
    message = preflight.problem(
        {"DISPLAY": ":0"},
        loads_all_but("libxcb-icccm.so.4", "libxcb-keysyms.so.1"),
        "linux",
    )
    assert message is not None and "\n" not in message
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in message
    assert message.endswith("sudo apt-get install libxcb-icccm4 libxcb-keysyms1")
    # Qt's own message blames xcb-cursor0; ours must not when that library is present
    assert "libxcb-cursor0" not in message


def test_every_library_present_is_no_problem():
    assert preflight.problem({"DISPLAY": ":0"}, loads_all_but(), "linux") is None
    assert preflight.problem({"QT_QPA_PLATFORM": "offscreen"}, loads_all_but(), "linux") is None


def test_no_display_is_named_before_any_library():
    message = preflight.problem({}, loads_all_but("libxcb.so.1"), "linux")
    assert message is not None and "DISPLAY is not set" in message


def test_headless_platforms_need_only_the_common_libraries():
    offscreen = {"QT_QPA_PLATFORM": "offscreen"}
    assert preflight.problem(offscreen, loads_all_but("libxcb-icccm.so.4"), "linux") is None
    message = preflight.problem(offscreen, loads_all_but("libEGL.so.1"), "linux")
    assert message is not None and message.endswith("sudo apt-get install libegl1")


def test_wayland_session_checks_wayland_libraries():
    session = {"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}
    assert preflight.platform_for(session) == "wayland"
    message = preflight.problem(session, loads_all_but("libwayland-client.so.0"), "linux")
    assert message is not None and "libwayland-client0" in message


def test_platform_argument_forms():
    assert preflight.platform_for({"QT_QPA_PLATFORM": "xcb:nograb"}) == "xcb"
    assert preflight.platform_for({"QT_QPA_PLATFORM": "wayland;xcb"}) == "wayland"
    assert preflight.platform_for({"DISPLAY": ":1"}) == "xcb"


def test_other_systems_are_not_checked():
    assert preflight.problem({}, loads_all_but("libGL.so.1"), "win32") is None
    assert preflight.problem({}, loads_all_but("libGL.so.1"), "darwin") is None


def test_app_without_a_display_exits_2_with_one_line(tmp_path):
    if not sys.platform.startswith("linux"):
        return
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    result = subprocess.run(
        [sys.executable, "-m", "studio.app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISPLAY is not set" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything was written
