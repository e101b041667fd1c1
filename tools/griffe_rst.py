"""A Griffe extension for the API reference: the reStructuredText habits of the docstrings, made Markdown.

The docstrings of hybrid_queue are plain prose, with two habits of
reStructuredText that Markdown would show as they are:

- cross-reference roles (``:class:`TaskResult```, ``:func:`current_task```):
  only the target is kept, as inline code;
- the ``::`` that introduces an indented literal block: dropped (``text::``
  becomes ``text:``, as reStructuredText shows it); the indented block that
  follows is a code block in Markdown already.

mkdocs.yml lists this module under the Python handler's ``extensions``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["ReStructuredTextHabits"]

# :class:`X`, :meth:`~a.b.X` and the like; the ~ (show the last name only) is dropped with the role.
ROLE = re.compile(r":(?:py:)?(?:attr|class|data|exc|func|meth|mod|obj):`~?([^`]+)`")
# A line that is only "::", or ends in " ::" (both vanish), or in "word::" (one colon stays).
ALONE = re.compile(r"^[ \t]*::[ \t]*$", re.MULTILINE)
SPACED = re.compile(r"[ \t]+::[ \t]*$", re.MULTILINE)
ATTACHED = re.compile(r"(?<=\S)::[ \t]*$", re.MULTILINE)


def markdown(text: str) -> str:
    """``text`` with its roles and literal-block markers rewritten for Markdown."""
    if "::" in text:
        text = ATTACHED.sub(":", SPACED.sub("", ALONE.sub("", text)))
    if ":`" in text:
        text = ROLE.sub(r"`\1`", text)
    return text


class ReStructuredTextHabits(griffe.Extension):
    """Rewrites every docstring with :func:`markdown` as it is loaded."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None:
            docstring.value = markdown(docstring.value)
