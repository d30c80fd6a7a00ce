"""pgcopy: copy the data of one PostgreSQL database into another with the same schema."""

__version__ = "0.1.0"
