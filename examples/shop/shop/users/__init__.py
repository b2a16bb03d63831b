"""The users service: users sharded by user id; a global e-mail directory issues the ids."""
