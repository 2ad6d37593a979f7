"""Field types shared by the models."""

from typing import Annotated

from pydantic import Field

Id = Annotated[str, Field(min_length=1, max_length=256)]
"""Any id a client may choose: not empty, and short enough to index."""
