"""The page frame shared by LAND Studio's pages (the Studio page and the teaching page): a dark single page
with a drawer, the title, a caption at the right of the toolbar, the drawer's panel, the slice views' layout
grid below the app bar, and the page's state as hidden JSON (``#land-state``, read by the browser tests)."""

from __future__ import annotations

from collections.abc import Callable

from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3


def build_page(server, layout_manager, title: str, caption: str, panel: Callable[[], None], state: str):
    """The page's layout; ``panel()`` fills the drawer, ``state`` is the JavaScript expression (of the
    page's state variables) written as JSON into the hidden ``#land-state`` element."""
    with SinglePageWithDrawerLayout(server, theme="dark", width=380) as layout:
        layout.title.set_text(title)
        with layout.toolbar:
            v3.VSpacer()
            html.Span(caption, classes="text-caption mr-4")
        with layout.drawer:
            panel()
        with layout.content:
            # below the app bar (64 px) and above the footer (about 24 px), right of the drawer
            with html.Div(style="position: relative; width: 100%; height: calc(100vh - 88px);"):
                layout_manager.initialize_layout_grid(layout)
            html.Pre("{{ JSON.stringify(" + state + ") }}", id="land-state", style="display: none;")
    return layout
