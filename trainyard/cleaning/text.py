"""Per-document text repair: markup stripped from HTML, Unicode normalised, mojibake
repaired (ftfy), control characters removed and whitespace normalised."""

from __future__ import annotations

import re
import unicodedata

import ftfy
from selectolax.lexbor import LexborHTMLParser

from trainyard.cleaning.spec import NormalizeSpec

# Tags whose presence makes a document HTML; a stray "<" in prose does not.
HTML_HINT = re.compile(
    r"<(?:!doctype|html|head|body|div|p|span|a|br|table|tr|td|ul|ol|li|h[1-6]|script|style"
    r"|meta|link|img|nav|section|article|header|footer|form|b|i|em|strong)\b[^>]*>",
    re.IGNORECASE,
)
DROPPED_TAGS = ("script", "style", "noscript", "template", "svg", "iframe", "head")
BLOCK_TAGS = (
    "p,div,br,li,tr,h1,h2,h3,h4,h5,h6,section,article,header,footer,nav,ul,ol,table,"
    "blockquote,pre,hr,title,dd,dt,form,main,aside,figure,figcaption"
)

# C0 and C1 control characters and DEL, except tab and newline.
CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)])
INLINE_SPACE = re.compile(r"[^\S\n]+")
BLANK_LINES = re.compile(r"\n{3,}")
# Repair only: quotes, ligatures and widths stay as written (NFKC folds the last two).
FTFY_CONFIG = ftfy.TextFixerConfig(
    unescape_html=False,
    uncurl_quotes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    normalization=None,
    explain=False,
)
# UTF-8 read as Latin-1 or Windows-1252 leaves a lead byte's character (Â to ô) before a
# continuation byte's; text without such a pair skips ftfy's slower, thorough check.
MOJIBAKE_HINT = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
    "\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030"
    "\u2039\u203a\u20ac\u2122]"
)


def looks_like_html(text: str) -> bool:
    """True when the text holds at least two known HTML tags."""
    matches = HTML_HINT.finditer(text)
    return next(matches, None) is not None and next(matches, None) is not None


def strip_html(text: str) -> str:
    """The visible text of an HTML document, one line per block element."""
    tree = LexborHTMLParser(text)
    for node in tree.css(",".join(DROPPED_TAGS)):
        node.decompose()
    for node in tree.css(BLOCK_TAGS):
        # A newline after each block keeps paragraphs apart once the tags are gone.
        node.insert_after("\n")
    root = tree.body or tree.root
    return root.text(deep=True, separator="", strip=False) if root is not None else ""


def normalize(text: str, spec: NormalizeSpec) -> str:
    """Repair and normalise one document's text as the spec asks."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # ASCII text cannot be mis-decoded and is already in every normal form.
    if not text.isascii():
        if spec.fix_mojibake and MOJIBAKE_HINT.search(text):
            text = ftfy.fix_text(text, FTFY_CONFIG)
        if spec.unicode_form:
            text = unicodedata.normalize(spec.unicode_form, text)
    if spec.remove_control:
        text = text.translate(CONTROL)
    if spec.whitespace:
        text = "\n".join(line.strip() for line in INLINE_SPACE.sub(" ", text).split("\n"))
        text = BLANK_LINES.sub("\n\n", text).strip()
    return text
