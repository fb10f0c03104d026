"""``dalle serve``: OpenAI's images API for one model (see ``model.cli.serve``).

``protocol`` checks requests and shapes errors (torch-free), ``worker`` runs one job at a time
from a bounded queue, ``service`` turns a checked request into PNGs with a bundle, and ``app``
is the Starlette app that ties them together.
"""
