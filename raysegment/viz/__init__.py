"""Pictures: `figures` draws side-by-side panels, outline overlays and contact sheets; `show` picks result
rows and renders them."""
