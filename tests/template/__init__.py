"""Offline checks of the deployable SAM template (template.yaml) and its sample events."""
