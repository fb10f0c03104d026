"""docs/krita.png from a real Krita under Xvfb (issue 32), as a user would have it: the plug-in's
zip imported by Krita's own importer into a temporary HOME, enabled in kritarc, Krita started on
a picture; a small driver plug-in (written into that HOME only) selects a rectangle, types the
caption into the docker and presses Generate against a live ``dalle serve``, then the screen is
captured with ImageMagick's ``import``. Run: ``python tests/krita_screenshot.py [OUT.png]``
(needs krita, Xvfb and imagemagick; about a minute). After the screenshot, the driver undoes the
candidates (Ctrl+Z each) and clicks a thumbnail, and the server stopped, presses Generate: what the
docker then says is returned too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_krita_e2e import krita_environment  # noqa: E402

DISPLAY = ":91"
SELECTION = (470, 250, 180, 150)
DRIVER = r"""
import os

from krita import Extension, Krita, Selection
from PyQt5.QtCore import Qt, QTimer


class Drive(Extension):
    def setup(self):
        pass

    def createActions(self, window):
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.go)
        self.timer.start(8000)

    def go(self):
        try:
            self.drive()
        except Exception:
            self.fail()

    def fail(self):
        import traceback

        with open(os.environ["SHOT_DONE"] + ".error", "w", encoding="utf-8") as file:
            file.write(traceback.format_exc())

    def drive(self):
        app = Krita.instance()
        window = app.activeWindow()
        window.qwindow().setGeometry(0, 0, 1600, 1000)  # (showMaximized hangs without a WM)
        document = app.activeDocument()  # opened by Krita from its command line
        for other in app.dockers():  # the layers and ours, nothing else
            other.setVisible(other.objectName() in ("dalle_studio", "KisLayerBox"))
        dock = next(d for d in app.dockers() if d.objectName() == "dalle_studio")
        dock.url.setText(os.environ["SHOT_URL"])
        dock.save_setting("url", dock.url.text())
        dock.caption.setPlainText("a red circle, blue background")
        dock.candidates.setValue(3)
        dock.seed.setValue(7)
        x, y, w, h = map(int, os.environ["SHOT_SELECTION"].split(","))
        selection = Selection()
        selection.select(x, y, w, h, 255)
        document.setSelection(selection)
        dock.on_connect()
        dock.generate_button.click()
        self.dock = dock
        QTimer.singleShot(500, self.wait)

    def wait(self):
        if not self.dock.nodes:
            QTimer.singleShot(500, self.wait)
            return
        QTimer.singleShot(1500, self.choose)  # Krita done with the added layers

    def choose(self):
        app = Krita.instance()
        self.active = [app.activeDocument().activeNode().name()]
        try:  # the second candidate chosen (toggle_zoom_to_fit hangs without a WM)
            self.dock.on_thumbnail(self.dock.thumbnails.item(1))
            self.dock.thumbnails.setCurrentRow(1)
            self.active.append(app.activeDocument().activeNode().name())
            window = app.activeWindow().qwindow()
            window.setGeometry(0, 0, 1600, 1000)  # the screen (the first one is not kept)
            layers = next(d for d in app.dockers() if d.objectName() == "KisLayerBox")
            window.resizeDocks([layers, self.dock], [250, 770], Qt.Vertical)
        except Exception:
            self.fail()
        QTimer.singleShot(800, self.zoom)

    def zoom(self):
        try:  # once the window has its size: 100 %, centred
            Krita.instance().activeWindow().activeView().canvas().resetZoom()
        except Exception:
            self.fail()
        self.finish = QTimer()
        self.finish.setSingleShot(True)
        self.finish.timeout.connect(self.done)
        self.finish.start(2000)

    def done(self):
        import json

        document = Krita.instance().activeDocument()
        facts = {
            "layers": [[node.name(), node.visible()] for node in self.dock.nodes],
            "top": [node.name() for node in document.rootNode().childNodes()],
            "thumbnails": self.dock.thumbnails.count(),
            "status": self.dock.status.text(),
            "model": self.dock.model_label.text(),
            "active": self.active,  # after Generate, after the second thumbnail's click
            "window": Krita.instance().activeWindow().qwindow().frameGeometry().height(),
            "docker_minimum": self.dock.minimumSizeHint().height(),
            "window_minimum": Krita.instance().activeWindow().qwindow().minimumSizeHint().height(),
        }
        with open(os.environ["SHOT_DONE"], "w", encoding="utf-8") as file:
            json.dump(facts, file)
        self.undo()

    def undo(self):  # once the screenshot is taken: Ctrl+Z per candidate, then a click
        if not os.path.exists(os.environ["SHOT_DONE"] + ".undo"):
            QTimer.singleShot(300, self.undo)
            return
        self.undos = len(self.dock.nodes)
        self.undo_one()

    def undo_one(self):  # one at a time, as the artist presses it
        if self.undos == 0:
            QTimer.singleShot(1000, self.click_undone)
            return
        self.undos -= 1
        try:
            Krita.instance().action("edit_undo").trigger()
        except Exception:
            self.fail()
        QTimer.singleShot(700, self.undo_one)

    def click_undone(self):
        try:
            self.dock.on_thumbnail(self.dock.thumbnails.item(0))
            document = Krita.instance().activeDocument()
            self.undone = {
                "top": [node.name() for node in document.rootNode().childNodes()],
                "thumbnails": self.dock.thumbnails.count(),
                "status": self.dock.status.text(),
            }
            self.dock.generate_button.click()  # the server was stopped meanwhile
        except Exception:
            self.fail()
        QTimer.singleShot(500, self.generated_down)

    def generated_down(self):
        import json

        if not self.dock.generate_button.isEnabled():  # still waiting for the answer
            QTimer.singleShot(500, self.generated_down)
            return
        self.undone["down"] = [self.dock.status.text(), self.dock.model_label.text()]
        with open(os.environ["SHOT_DONE"] + ".undone", "w", encoding="utf-8") as file:
            json.dump(self.undone, file)


Krita.instance().addExtension(Drive(Krita.instance()))
"""


def picture(path: Path) -> None:
    """A scene in the embedded model's world: shapes on a coloured background."""
    image = Image.new("RGB", (800, 560), (70, 110, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((90, 90, 260, 260), fill=(240, 200, 40))
    draw.rectangle((300, 330, 430, 460), fill=(250, 250, 250))
    draw.polygon([(640, 60), (740, 230), (540, 230)], fill=(60, 170, 80))
    image.save(path)


def install(home: Path, url: str) -> None:
    share = home / ".local" / "share" / "krita"
    share.mkdir(parents=True)
    plugin = home / "dalle_studio.zip"
    subprocess.run(
        [sys.executable, "-m", "model.cli", "krita-plugin", "--out", str(plugin)], check=True
    )
    importer = "/usr/share/krita/pykrita/plugin_importer/plugin_importer.py"
    subprocess.run(["/usr/bin/python3", importer, str(plugin), str(share)], check=True)
    (share / "pykrita" / "shot_driver").mkdir()
    (share / "pykrita" / "shot_driver" / "__init__.py").write_text(DRIVER)
    (share / "pykrita" / "shot_driver.desktop").write_text(
        "[Desktop Entry]\nType=Service\nServiceTypes=Krita/PythonPlugin\n"
        "X-KDE-Library=shot_driver\nX-Python-2-Compatible=false\nName=Shot driver\n"
    )
    config = home / ".config"
    config.mkdir()
    (config / "kritarc").write_text(
        "[python]\nenable_dalle_studio=true\nenable_shot_driver=true\n\n"
        "[MainWindow]\nState=\n\n[General]\nshowSplash=false\n"
    )


def main(out: Path) -> dict:
    """Take the screenshot into ``out``; returns what the driver saw (layers, thumbnails,
    status, model)."""
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        home = temp / "home"
        server = subprocess.Popen(
            [sys.executable, "-m", "model.cli", "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        url = server.stdout.readline().split()[-1]
        install(home, url)
        shot = temp / "picture.png"
        picture(shot)
        xvfb = subprocess.Popen(["Xvfb", DISPLAY, "-screen", "0", "1600x1000x24"])
        env = {
            **krita_environment(),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_RUNTIME_DIR": str(temp / "runtime"),
            "DISPLAY": DISPLAY,
            "LANG": "C.UTF-8",
            "QT_QPA_PLATFORM": "xcb",
            "SHOT_URL": url,
            "SHOT_SELECTION": ",".join(map(str, SELECTION)),
            "SHOT_DONE": str(temp / "done"),
        }
        krita = subprocess.Popen(
            ["krita", "--nosplash", str(shot)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(temp / "krita.log", "w"),
        )
        try:
            deadline = time.monotonic() + 120
            while not (temp / "done").exists():
                if (temp / "done.error").exists():
                    raise SystemExit((temp / "done.error").read_text())
                if time.monotonic() > deadline or krita.poll() is not None:
                    failed = out.with_suffix(".failed.png")
                    subprocess.run(["import", "-display", DISPLAY, "-window", "root", str(failed)])
                    raise SystemExit(
                        f"krita: {krita.poll()}: " + (temp / "krita.log").read_text()[-3000:]
                    )
                time.sleep(1)
            subprocess.run(["import", "-display", DISPLAY, "-window", "root", str(out)], check=True)
            print(f"wrote {out}")
            facts = json.loads((temp / "done").read_text(encoding="utf-8"))
            server.terminate()  # then the candidates undone, a thumbnail clicked, Generate
            server.wait(20)
            (temp / "done.undo").touch()
            deadline = time.monotonic() + 60
            while not (temp / "done.undone").exists() and time.monotonic() < deadline:
                if (temp / "done.error").exists():
                    raise SystemExit((temp / "done.error").read_text())
                time.sleep(0.5)
            time.sleep(0.5)  # written whole
            return {**facts, "undone": json.loads((temp / "done.undone").read_text("utf-8"))}
        finally:
            for process in (krita, xvfb, server):
                process.terminate()
                process.wait(20)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "krita.png")
