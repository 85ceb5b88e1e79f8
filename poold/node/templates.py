"""Moved to poold.bitcoin.template (parsing a getblocktemplate answer is pure, no node I/O).

A re-export for code written against the old path; new code imports poold.bitcoin.template.
"""

from poold.bitcoin.template import *  # noqa: F403
