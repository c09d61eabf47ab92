"""The labeling web app (FastAPI). `create_app(Settings(db_url=...))` builds it; nothing here imports torch."""

from lmpref.web.app import create_app
from lmpref.web.settings import Settings

__all__ = ["Settings", "create_app"]
