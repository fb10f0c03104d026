"""Run inside a real Krita by tests/test_krita_e2e.py: ``kritarunner -s krita_e2e -f main PICTURE
URL KEY OUT X Y W H N SEED``. Loads the plug-in as Krita does (``import dalle_studio`` registers
its docker), opens the picture, selects the rectangle, generates through the plug-in's Krita
side against the live server, and writes what the test checks into OUT: the picture's merged
pixels before, each new layer's pixels and the merged pixels after (BGRA, as Krita gives them),
the layers' names and visibility; then one candidate's layer removed (as an undo does), what the
plug-in says when it is chosen. (Which layer is active needs a view, which kritarunner cannot
open: tests/krita_screenshot.py checks it in a real window.)
"""

import json
import os
import sys
import traceback


def main(args):
    picture, url, key, out, x, y, w, h, n, seed = args
    try:
        run(picture, url, key, out, (int(x), int(y), int(w), int(h)), int(n), int(seed))
    except Exception:  # written where the test reads it: kritarunner itself exits 0
        with open(os.path.join(out, "error.txt"), "w") as file:
            file.write(traceback.format_exc())
    sys.stdout.flush()


def run(picture, url, key, out, bounds, n, seed):
    import dalle_studio  # noqa: F401  the plug-in, as Krita loads it (registers the docker)
    from dalle_studio import client, krita_side
    from krita import Krita, Selection

    app = Krita.instance()
    document = app.openDocument(picture)
    document.waitForDone()
    width, height = document.width(), document.height()
    document.refreshProjection()

    def save(name, data):
        with open(os.path.join(out, name), "wb") as file:
            file.write(bytes(data))

    save("before.bgra", document.pixelData(0, 0, width, height))
    selection = Selection()
    selection.select(*bounds, 255)
    document.setSelection(selection)
    server = client.Server(url, key)
    job = krita_side.prepare(document, "a red circle", n, seed, None, server.model())
    regions, answer = job.generate(server)
    nodes = krita_side.add_layers(document, job, regions, answer.seed)
    document.waitForDone()
    layers = []
    for number, node in enumerate(nodes):
        save(f"layer{number}.bgra", node.pixelData(0, 0, width, height))
        layers.append({"name": node.name(), "visible": node.visible()})
    document.refreshProjection()
    save("after.bgra", document.pixelData(0, 0, width, height))
    top = [child.name() for child in document.rootNode().childNodes()]
    krita_side.show_only(document, nodes, nodes[1])  # the second thumbnail clicked
    chosen = [node.visible() for node in nodes]
    nodes[0].remove()  # as Ctrl+Z removes the last added layers
    document.waitForDone()
    try:
        krita_side.show_only(document, nodes, nodes[0])
        gone = "no error"
    except krita_side.core.PluginError as error:
        gone = str(error)
    facts = {
        "size": [width, height],
        "layers": layers,
        "top": top[-1],
        "crop": [job.plan.crop.x, job.plan.crop.y, job.plan.crop.width, job.plan.crop.height],
        "sent": list(job.plan.sent),
        "seed": answer.seed,
        "depth": document.colorDepth(),
        "chosen": chosen,
        "present": [krita_side.present(document, node) for node in nodes],
        "gone": gone,
    }
    with open(os.path.join(out, "facts.json"), "w") as file:
        json.dump(facts, file)
