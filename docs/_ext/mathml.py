"""Server-side math for the HTML pages: LaTeX becomes MathML at build time.

Browsers render MathML Core natively (Chromium ≥ 109, Firefox, Safari), so the
pages need no MathJax/KaTeX script and nothing is fetched from a CDN when the
site is built or read. The conversion is done by ``latex2mathml`` (PyPI).

A formula that ``latex2mathml`` cannot convert, or whose output still holds a
LaTeX command it did not know (it would show as ``\\foo`` in the page), is a
Sphinx warning, hence an error under ``sphinx-build -W``.
"""

from __future__ import annotations

import re

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.locale import _
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number

logger = logging.getLogger(__name__)

# An unknown command survives as a token such as <mi>\foo</mi>; '&' outside a
# table environment as <mi>&</mi>.
_LEFTOVER = re.compile(r"<m[io]>(\\[A-Za-z]+|&amp;|&)</m[io]>")
# latex2mathml copies the text of \text{...} verbatim, escapes included (max\_step).
_MTEXT = re.compile(r"<mtext>(.*?)</mtext>", re.S)
_TEXT_ESCAPE = re.compile(r"\\([_%&#${}])")
# TeX sets a thin space after \log, \exp, ... unless a parenthesis follows;
# latex2mathml emits a bare <mi>log</mi>, which browsers run into the next letter.
_FUNCTION = re.compile(r"(<mi>(?:log|exp|det|dim|sin|cos|tanh|max|min)</mi>)(?!<mo stretchy=\"false\">&#x00028;)")
# ... and before it, after a symbol (∇_θ log p, not ∇_θlog p).
_FUNCTION_AFTER_SYMBOL = re.compile(
    r"(?:(?<=</mi>)|(?<=</mn>)|(?<=</msub>)|(?<=</msup>)|(?<=</msubsup>))(?=<mi>(?:log|exp|det|dim|sin|cos|tanh)</mi>)"
)


def _mathml(self, node: nodes.Element, latex: str, display: str) -> str:
    try:
        out = convert(latex, display=display)
    except Exception as exc:  # latex2mathml raises its own exception types
        logger.warning("math not converted to MathML (%s): %s", exc, latex, location=node)
        return self.encode(latex)
    out = _FUNCTION.sub(r'\1<mspace width="0.1667em"></mspace>', out)
    out = _FUNCTION_AFTER_SYMBOL.sub('<mspace width="0.1667em"></mspace>', out)
    out = _MTEXT.sub(lambda m: "<mtext>" + _TEXT_ESCAPE.sub(r"\1", m.group(1)) + "</mtext>", out)
    bad = _LEFTOVER.search(out) or re.search(r"<mtext>[^<]*(\\[A-Za-z]+)", out)
    if bad:
        logger.warning("math holds %s that MathML cannot show: %s", bad.group(1), latex, location=node)
    return out


def visit_math(self, node: nodes.math) -> None:
    self.body.append(self.starttag(node, "span", "", CLASS="math notranslate"))
    self.body.append(_mathml(self, node, node.astext(), "inline"))
    self.body.append("</span>")
    raise nodes.SkipNode


def visit_displaymath(self, node: nodes.math_block) -> None:
    self.body.append(self.starttag(node, "div", CLASS="math notranslate"))
    if node["number"]:
        number = get_node_equation_number(self, node)
        self.body.append(f'<span class="eqno">({number})')
        self.add_permalink_ref(node, _("Link to this equation"))
        self.body.append("</span>")
    # Blank-line separated parts are separate equations, shown one under the other.
    self.body.append('<div class="math-parts">')
    for part in (p for p in node.astext().split("\n\n") if p.strip()):
        self.body.append(_mathml(self, node, part, "block"))
    self.body.append("</div></div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer(
        "mathml",
        inline_renderers=(visit_math, None),
        block_renderers=(visit_displaymath, None),
    )
    app.add_css_file("mathml.css")
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
