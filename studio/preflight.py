"""Before Qt starts: is there a display, and are the libraries Qt's platform plugin loads present?

Without them Qt aborts the process (exit 134) with a message that often blames the wrong library
(a missing ``libxcb-icccm4`` is reported as "xcb-cursor0 is needed"). Checked here, the app says
in one line what is missing and which packages install it, and exits 2. Linux only: Windows and
macOS builds carry their platform plugin's dependencies.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping

# shared library -> the Debian/Ubuntu package that installs it
COMMON_LIBRARIES = {
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
}
# what Qt 6's xcb plugin (libqxcb.so, libQt6XcbQpa.so.6) links against beyond the common ones
XCB_LIBRARIES = {
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}
WAYLAND_LIBRARIES = {
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}
HEADLESS_PLATFORMS = {"offscreen", "minimal", "minimalegl", "vnc", "linuxfb", "eglfs"}


def _loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def platform_for(environ: Mapping[str, str]) -> str:
    """The Qt platform plugin this environment will start: QT_QPA_PLATFORM, else the session's."""
    chosen = environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    if chosen:
        return chosen
    if environ.get("WAYLAND_DISPLAY") and environ.get("XDG_SESSION_TYPE") == "wayland":
        return "wayland"
    return "xcb"


def problem(
    environ: Mapping[str, str] | None = None,
    loads: Callable[[str], bool] = _loads,
    system: str = sys.platform,
) -> str | None:
    """One line saying why Qt cannot start here and what to install, or None when it can."""
    if not system.startswith("linux"):
        return None
    environ = os.environ if environ is None else environ
    platform = platform_for(environ)
    needed = dict(COMMON_LIBRARIES)
    if platform == "xcb":
        if not environ.get("DISPLAY"):
            return (
                "no display to open a window on (DISPLAY is not set): start it from a desktop "
                "session, over `ssh -X`, or under `xvfb-run`; the `dalle` command works without one"
            )
        needed.update(XCB_LIBRARIES)
    elif platform == "wayland":
        needed.update(WAYLAND_LIBRARIES)
    elif platform not in HEADLESS_PLATFORMS:
        return None  # a platform we know nothing about: let Qt speak for itself
    missing = [name for name in needed if not loads(name)]
    if not missing:
        return None
    packages = " ".join(dict.fromkeys(needed[name] for name in missing))
    return (
        f"Qt's {platform} platform needs {', '.join(missing)}, not found on this system; "
        f"install them with: sudo apt-get install {packages}"
    )
