"""A small Django project run by ``make demo`` on the local cluster."""
