"""Email: templates, the lookup that picks a variant, and what sends them."""
