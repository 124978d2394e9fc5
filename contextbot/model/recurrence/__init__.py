"""The recurrence: the cell's equations, once readably and several times fast."""
