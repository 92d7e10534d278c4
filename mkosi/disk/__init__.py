"""Disk images, built from files alone: no mounts, no loop devices, no device-mapper."""
