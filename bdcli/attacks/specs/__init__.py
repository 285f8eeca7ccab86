"""The torch-free half of each attack: its config, help and catalog entry (``register``). Every module here
is imported by ``bdcli.attacks`` (auto-discovery); its implementation module is imported only when it runs."""
