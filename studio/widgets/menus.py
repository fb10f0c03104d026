"""The main window's menus and actions, and when Generate is offered.

``build`` makes the menu bar of a ``MainWindow`` and sets its actions as the window's attributes
(``generate_action``, ``undo_action``, ``recent_menu``…); every slot is the window's or its
views'. ``update_generate`` keeps Generate (the menu item, Ctrl+Enter and the caption panel's
button) off while it could not start, with a tooltip saying why, instead of a dialog after the
click.
"""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence, QUndoGroup

from studio.widgets.caption import GENERATE_TIP

UNDO_KEYS = (QKeySequence("Ctrl+Z"),)
REDO_KEYS = (QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y"))


def action(window, menu, text, slot, *shortcuts) -> QAction:
    """A menu item of ``window`` whose shortcuts work while the menu bar is hidden too."""
    item = QAction(text, window)
    if shortcuts:
        item.setShortcuts([QKeySequence(s) for s in shortcuts])
    item.triggered.connect(slot)
    menu.addAction(item)
    window.addAction(item)
    return item


def build(window) -> None:
    """File, Edit, View, Generate and Help for ``window`` (see the module's docstring)."""
    bar = window.menuBar()
    files = bar.addMenu("&File")
    files.setToolTipsVisible(True)  # New scene's says why it is off for some models
    window.new_scene_action = action(window, files, "New &scene", window.new_scene, "Ctrl+N")
    open_ = QKeySequence.StandardKey.Open
    action(window, files, "&Open image…", window.open_image_dialog, open_)
    action(window, files, "Open &project…", window.open_project_dialog, "Ctrl+Shift+O")
    templates = files.addMenu("&New from template")
    window.image_to_image_action = action(
        window,
        templates,
        "&Image-to-image (top → bottom)…",
        window.image_to_image_dialog,
        "Ctrl+Shift+N",
    )
    window.recent_menu = files.addMenu("Open &recent")
    save = QKeySequence.StandardKey.Save
    action(window, files, "&Save project", window.save_project, save)
    action(window, files, "Save project &as…", window.save_project_as, "Ctrl+Shift+S")
    action(window, files, "&Export PNG…", window.export_png, "Ctrl+Shift+E")
    paste = QKeySequence.StandardKey.Paste
    action(window, files, "&Paste image", window.paste_image, paste)
    files.addSeparator()
    action(window, files, "&Import model…", window.import_model_dialog)
    action(window, files, "Se&ttings…", window.open_settings, "Ctrl+,")
    action(window, files, "&Quit", window.close, QKeySequence.StandardKey.Quit)
    _edit(window, bar.addMenu("&Edit"))
    view = bar.addMenu("&View")
    canvas = window.canvas
    action(window, view, "&Fit", canvas.fit, "Ctrl+0")
    action(window, view, "&100 %", canvas.actual_size, "Ctrl+1")
    action(window, view, "Zoom &in", canvas.zoom_in, "Ctrl++", "Ctrl+=")
    action(window, view, "Zoom &out", canvas.zoom_out, "Ctrl+-")
    window.grid_action = action(window, view, "Token &grid", canvas.set_show_grid, "Ctrl+G")
    window.grid_action.setCheckable(True)
    run = bar.addMenu("&Generate")
    run.setToolTipsVisible(True)  # Generate's says why it is off
    window.generate_action = action(
        window, run, "&Generate", window.session.generate, "Ctrl+Return", "Ctrl+Enter"
    )
    action(window, run, "&Cancel / discard", window.escape, "Esc")
    action(window, run, "&Accept candidate", window.accept_candidate, "Ctrl+Shift+Return")
    help_ = bar.addMenu("&Help")
    action(window, help_, "&About DALL·E Studio…", window.show_about)


def _edit(window, edit) -> None:
    """Undo and Redo follow the document's undo stack: off with nothing to do, and named after
    the step ("Undo Accept candidate"). A reopened project starts with none: its history entries
    are kept, not its undo steps."""
    window.undo_group = QUndoGroup(window)
    window.undo_action = window.undo_group.createUndoAction(window, "&Undo")
    window.redo_action = window.undo_group.createRedoAction(window, "&Redo")
    for item, shortcuts in ((window.undo_action, UNDO_KEYS), (window.redo_action, REDO_KEYS)):
        item.setShortcuts(list(shortcuts))
        edit.addAction(item)
        window.addAction(item)  # shortcuts work while the menu bar is hidden too


def why_not_generate(session) -> str:
    """Why Generate cannot start now, in the user's words; "" when it can."""
    if session.running:
        return "a generation is running: Esc cancels it"
    if not session.loaded:
        if session.model_state == "loading":
            return "waits for the model to load"
        return "no model is loaded: open one in File › Settings"
    if session.document.cell is None:
        return "drag on the image first to mark the rectangle to regenerate"
    return ""


def update_generate(window) -> None:
    """Generate on or off, with the reason as its tooltip (menu item and caption button)."""
    reason = why_not_generate(window.session)
    window.generate_action.setEnabled(not reason)
    window.generate_action.setToolTip(reason or GENERATE_TIP)
    window.caption.set_generate_blocked(reason)
