"""pycor: LXC and LXD containers on one read-only base through OverlayFS."""

__version__ = "0.1.0"
