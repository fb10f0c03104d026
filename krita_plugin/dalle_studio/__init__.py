"""DALL·E Studio for Krita: a docker that regenerates the selection's rectangle through a local
``dalle serve`` (OpenAI's images API), each candidate a new paint layer.

``core`` and ``client`` are standard library only (tested outside Krita); ``docker`` is the
Krita side (PyQt5 and Krita's API), registered only when Krita loads the plug-in.
"""

try:
    import krita  # noqa: F401  (only inside Krita)
except ImportError:
    krita = None

if krita is not None:
    from .docker import register

    register()
