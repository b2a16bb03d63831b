from importlib import import_module

Migration = import_module("tests.onlineapp.migrations.0001_initial").Migration
