"""The torch-free half of each defense: its config, help and catalog entry (``register``). Every module here
is imported by ``bdcli.defenses`` (auto-discovery); its implementation module is imported only when it runs."""
