-- Nothing to undo: the finite times are what the sessions' tokens can carry.
SELECT 1;
