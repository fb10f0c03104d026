"""The DALL·E Studio docker: caption, candidates, seed, guidance, Generate / Cancel, progress and
the candidates as thumbnails (clicking one shows its layer and makes it active); the server's
model and card headline; settings (server URL, API key, the dalle command) kept with Krita's
settings; the whole in a scroll area, so the docker fits a small screen. The edit goes out
through Qt's network access, on Krita's event loop (no Python thread: Krita stays responsive, and
Cancel aborts the request, which cancels the server's job). A ``dalle serve`` the docker started
stops when Krita quits; when the server is gone, the model line says "Not connected".
"""

from __future__ import annotations

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita
from PyQt5.QtCore import QByteArray, QSize, Qt, QTimer, QUrl
from PyQt5.QtGui import QIcon, QImage, QPixmap
from PyQt5.QtNetwork import QNetworkAccessManager, QNetworkReply, QNetworkRequest
from PyQt5.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import client, core, krita_side

SETTINGS_GROUP = "dalle_studio"
THUMBNAIL = 72  # the thumbnails' side in pixels
LAUNCHER = client.Launcher()  # the dalle serve this plug-in started, if any


def setting(name: str, default: str) -> str:
    return Krita.instance().readSetting(SETTINGS_GROUP, name, default)


class DalleDocker(DockWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle("DALL·E Studio")
        self.model: client.ServerModel | None = None
        self.server: client.Server | None = None
        self.job: krita_side.Job | None = None
        self.document = None
        self.nodes: list = []
        self.network = QNetworkAccessManager(self)
        self.reply: QNetworkReply | None = None
        self.polling = QTimer(self)  # while a started dalle serve loads
        self.polling.setInterval(500)
        self.polling.timeout.connect(self.poll_started)
        body = QWidget(self)
        layout = QVBoxLayout(body)
        layout.addWidget(self.build_server_box())
        layout.addLayout(self.build_form())
        layout.addLayout(self.build_buttons())
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)  # the server gives no steps: busy or not
        self.status = QLabel("Select a region, describe it, Generate.")
        self.status.setWordWrap(True)
        self.thumbnails = QListWidget()
        self.thumbnails.setViewMode(QListWidget.IconMode)
        self.thumbnails.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.thumbnails.setMinimumHeight(THUMBNAIL + 28)
        self.thumbnails.itemClicked.connect(self.on_thumbnail)
        for widget in (self.progress, self.status, self.thumbnails):
            layout.addWidget(widget)
        scroll = QScrollArea(self)  # the docker fits any screen: its body scrolls when taller
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setWidget(body)
        self.setWidget(scroll)

    # -- building

    def build_server_box(self) -> QGroupBox:
        box = QGroupBox("Server")
        form = QFormLayout(box)
        self.url = QLineEdit(setting("url", client.DEFAULT_URL))
        self.key = QLineEdit(setting("api_key", ""))
        self.key.setEchoMode(QLineEdit.Password)
        self.key.setPlaceholderText("optional")
        self.command = QLineEdit(setting("command", client.DEFAULT_COMMAND))
        self.command.setToolTip("The dalle command that starts `dalle serve` when none answers")
        for label, edit, name in (
            ("URL", self.url, "url"),
            ("API key", self.key, "api_key"),
            ("dalle command", self.command, "command"),
        ):
            edit.editingFinished.connect(lambda e=edit, n=name: self.save_setting(n, e.text()))
            form.addRow(label, edit)
        self.model_label = QLabel("Not connected")
        self.model_label.setWordWrap(True)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.on_connect)
        self.start_button = QPushButton("Start dalle serve")
        self.start_button.clicked.connect(self.on_start)
        self.start_button.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.connect_button)
        row.addWidget(self.start_button)
        form.addRow(self.model_label)
        form.addRow(row)
        return box

    def build_form(self) -> QFormLayout:
        form = QFormLayout()
        self.caption = QPlainTextEdit()
        self.caption.setPlaceholderText("What the selected region should show")
        self.caption.setMaximumHeight(56)
        self.candidates = QSpinBox()
        self.candidates.setRange(1, 10)
        self.candidates.setValue(3)
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setSpecialValueText("random")
        self.seed.setValue(-1)
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 20.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setValue(1.0)
        self.guidance.setToolTip("Classifier-free guidance scale; 1 = the caption alone")
        form.addRow("Caption", self.caption)
        form.addRow("Candidates", self.candidates)
        form.addRow("Seed", self.seed)
        form.addRow("Guidance", self.guidance)
        return form

    def build_buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self.on_generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.on_cancel)
        self.cancel_button.setEnabled(False)
        row.addWidget(self.generate_button)
        row.addWidget(self.cancel_button)
        return row

    # -- server

    def save_setting(self, name: str, value: str) -> None:
        Krita.instance().writeSetting(SETTINGS_GROUP, name, value)
        if name in ("url", "api_key"):
            self.model = None
            self.model_label.setText("Not connected")

    def make_server(self) -> client.Server:
        return client.Server(self.url.text(), self.key.text())

    def connect_server(self) -> client.ServerModel:
        """The served model (asked once, then kept); offers to start dalle serve when none
        answers."""
        if self.model is None:
            self.server = self.make_server()
            try:
                self.model = self.server.model()
            except core.PluginError:
                self.disconnected()
                raise
            self.start_button.setEnabled(False)
            self.model_label.setText(self.model.describe())
        return self.model

    def disconnected(self) -> None:
        """The server is gone: its model no longer shown as if connected; Start offered."""
        self.model = None
        self.model_label.setText("Not connected")
        self.start_button.setEnabled(True)

    def on_connect(self) -> None:
        self.model = None
        try:
            self.connect_server()
            self.status.setText("Connected.")
        except core.PluginError as error:
            self.show_error(str(error))

    def on_start(self) -> None:
        try:
            self.starting = self.make_server()
            LAUNCHER.command = self.command.text()
            LAUNCHER.spawn(self.starting)
        except core.PluginError as error:
            self.show_error(str(error))
            return
        self.set_busy(True, f"Starting {LAUNCHER.command} serve…")
        self.cancel_button.setEnabled(False)
        self.polling.start()

    def poll_started(self) -> None:
        try:
            if not LAUNCHER.check(self.starting):
                return
        except core.PluginError as error:
            self.polling.stop()
            self.set_busy(False, "")
            self.show_error(str(error))
            return
        self.polling.stop()
        self.set_busy(False, "")
        self.on_connect()

    # -- generating

    def on_generate(self) -> None:
        try:
            model = self.connect_server()
            seed = self.seed.value()
            guidance = self.guidance.value()
            self.document = Krita.instance().activeDocument()
            self.job = krita_side.prepare(
                self.document,
                self.caption.toPlainText(),
                self.candidates.value(),
                None if seed < 0 else seed,
                None if guidance == 1.0 else guidance,
                model,
            )
            url, body, headers = self.server.edit_parts(self.job.request())
        except core.PluginError as error:
            self.show_error(str(error))
            return
        request = QNetworkRequest(QUrl(url))
        for name, value in headers.items():
            request.setRawHeader(name.encode(), value.encode())
        request.setTransferTimeout(int(self.server.timeout * 1000))
        self.reply = self.network.post(request, QByteArray(body))
        self.reply.finished.connect(self.on_reply)
        region = self.job.plan.region
        self.set_busy(True, f"Generating {self.job.n} for {region.width}x{region.height} px…")

    def on_cancel(self) -> None:
        if self.reply is not None:
            self.reply.abort()

    def on_reply(self) -> None:
        reply, self.reply = self.reply, None
        self.set_busy(False, "")
        status = reply.attribute(QNetworkRequest.HttpStatusCodeAttribute)
        data = bytes(reply.readAll())
        error = reply.error()
        reply.deleteLater()
        try:
            if error == QNetworkReply.OperationCanceledError:
                raise core.PluginError("cancelled")
            if status is None:
                raise core.PluginError(
                    client.unreachable(self.server.url, reply.errorString(), "no answer from")
                )
            answer = client.answer_of(int(status), data)
            regions = self.job.regions(answer)
        except core.PluginError as failure:
            self.show_error(str(failure))
            if status is None and error != QNetworkReply.OperationCanceledError:
                self.disconnected()
            return
        self.nodes = krita_side.add_layers(self.document, self.job, regions, answer.seed)
        # Krita makes each added layer active once back in its event loop: the first candidate
        # (the visible one) is made active after that, so the next stroke goes onto it
        QTimer.singleShot(0, self.activate_first)
        self.show_thumbnails(regions)
        self.status.setText(
            f"{len(regions)} candidates (seed {answer.seed}) as new layers; click one to show it."
        )

    def activate_first(self) -> None:
        if self.nodes and krita_side.present(self.document, self.nodes[0]):
            self.document.setActiveNode(self.nodes[0])

    def show_thumbnails(self, regions: list[bytes]) -> None:
        self.thumbnails.clear()
        region = self.job.plan.region
        for number, (pixels, node) in enumerate(zip(regions, self.nodes, strict=True)):
            image = QImage(pixels, region.width, region.height, QImage.Format_RGBA8888).copy()
            icon = QIcon(QPixmap.fromImage(image.scaled(THUMBNAIL, THUMBNAIL, Qt.KeepAspectRatio)))
            item = QListWidgetItem(icon, str(number + 1))
            item.setData(Qt.UserRole, number)
            item.setToolTip(node.name())
            self.thumbnails.addItem(item)
        if regions:
            self.thumbnails.setCurrentRow(0)

    def on_thumbnail(self, item: QListWidgetItem) -> None:
        """Show the clicked candidate's layer and make it active; when it was undone, say so and
        drop the thumbnails of the candidates no longer in the document."""
        number = item.data(Qt.UserRole)
        if self.document is None or not 0 <= number < len(self.nodes):
            return
        try:
            krita_side.show_only(self.document, self.nodes, self.nodes[number])
        except core.PluginError as error:
            self.show_error(str(error))
            for row in reversed(range(self.thumbnails.count())):
                node = self.nodes[self.thumbnails.item(row).data(Qt.UserRole)]
                if not krita_side.present(self.document, node):
                    self.thumbnails.takeItem(row)

    def set_busy(self, busy: bool, text: str) -> None:
        self.generate_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.progress.setRange(0, 0 if busy else 1)
        self.status.setText(text)

    def show_error(self, message: str) -> None:
        self.status.setText(f"⚠ {message}")

    def canvasChanged(self, canvas) -> None:  # noqa: N802  Krita's name
        pass


class StopServerOnExit(Extension):
    """Stops the dalle serve the docker started when Krita quits."""

    def setup(self) -> None:
        Krita.instance().notifier().applicationClosing.connect(LAUNCHER.stop)

    def createActions(self, window) -> None:  # noqa: N802  Krita's name
        action = window.createAction("dalle_studio_docker", "DALL·E Studio", "tools/scripts")
        action.triggered.connect(self.show_docker)

    def show_docker(self) -> None:
        window = Krita.instance().activeWindow()
        for dock in window.dockers() if window else []:
            if dock.objectName() == "dalle_studio":
                dock.show()
                dock.raise_()


def register() -> None:
    app = Krita.instance()
    app.addExtension(StopServerOnExit(app))
    factory = DockWidgetFactory("dalle_studio", DockWidgetFactoryBase.DockRight, DalleDocker)
    app.addDockWidgetFactory(factory)
