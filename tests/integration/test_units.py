"""Pure logic: names, overlay option strings, layer metadata, hook arguments, template lines."""

from __future__ import annotations



