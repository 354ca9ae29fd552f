"""Procedural people for the ``synthetic_people`` data set (see ``person.py``)."""
