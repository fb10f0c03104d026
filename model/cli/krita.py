"""``dalle krita-plugin --out FILE.zip``: the Krita plug-in (krita_plugin/, shipped as package
data) as the ``.zip`` Krita's Tools › Scripts › Import Python Plugin from File reads:
``dalle_studio.desktop``, the ``dalle_studio/`` module and ``dalle_studio.action`` at its top.
Written through the atomic writer; the module's Python is compiled first, so a broken file is
one line, not a plug-in Krita cannot load.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

from model.cli.common import CLIError
from model.files import write_bytes

PLUGIN = "dalle_studio"


def plugin_folder() -> Path:
    """krita_plugin/: where pip installed it, else beside model/ in a checkout."""
    spec = importlib.util.find_spec("krita_plugin")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / f"{PLUGIN}.desktop").is_file():
                return Path(location)
    folder = Path(__file__).resolve().parent.parent.parent / "krita_plugin"
    if not (folder / f"{PLUGIN}.desktop").is_file():
        raise CLIError("the Krita plug-in's files are missing from this installation")
    return folder


def plugin_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, name in the zip) of every file the plug-in ships, Python compiled first."""
    files = [(folder / f"{PLUGIN}.desktop", f"{PLUGIN}.desktop")]
    files.append((folder / f"{PLUGIN}.action", f"{PLUGIN}.action"))
    for source in sorted((folder / PLUGIN).glob("*.py")):
        try:
            compile(source.read_bytes(), str(source), "exec")
        except SyntaxError as error:
            raise CLIError(
                f"{source.name} does not compile: {error.msg} (line {error.lineno})"
            ) from None
        files.append((source, f"{PLUGIN}/{source.name}"))
    return files


def build_zip(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{PLUGIN}/", b"")  # Krita's importer finds the module by this entry
        for source, name in plugin_files(folder):
            archive.writestr(name, source.read_bytes())
    return buffer.getvalue()


def cmd_krita_plugin(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".zip":
        raise CLIError(f"--out must name a .zip file, got {args.out!r}")
    if out.is_dir():
        raise CLIError(f"--out {args.out!r} is a folder; name the .zip file to write")
    if not out.parent.is_dir():
        raise CLIError(f"--out's folder {str(out.parent)!r} does not exist")
    data = build_zip(plugin_folder())
    write_bytes(out, data)
    print(
        f"wrote {out} ({len(data) / 1024:.0f} KB): in Krita, Tools › Scripts › Import Python "
        "Plugin from File…, then enable DALL·E Studio and restart Krita"
    )
    return 0


def add_krita_args(sub) -> None:
    p = sub.add_parser(
        "krita-plugin",
        help="build the Krita plug-in's .zip (Tools › Scripts › Import Python Plugin from File)",
        description="Write the DALL·E Studio plug-in for Krita 5 as a .zip Krita imports: a "
        "docker that regenerates the selection through `dalle serve`.",
    )
    p.add_argument("--out", required=True, help="the .zip to write")
    p.set_defaults(func=cmd_krita_plugin)
