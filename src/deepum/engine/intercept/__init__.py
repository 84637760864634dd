"""The dispatch modes that see every operator and every host read."""
