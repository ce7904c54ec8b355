"""Named device profiles for ``memory.profile``: how much memory one foreground app may use before jetsam kills it.

Apple does not publish these limits. The numbers are the measured crash points of a test app that allocates until it
is killed, collected in the Stack Overflow answer "iOS app maximum memory budget"
(https://stackoverflow.com/a/15200855, question 5887248): "crash amount / total RAM" per device and iOS version.
Newer devices are not in that list; its summary gives the share of RAM by device size (4 GB: 54-55 %, 6 GB: 81 %),
which the profiles below apply to the device's RAM where noted. Apple's ``increased-memory-limit`` entitlement raises
the limit on some devices; these profiles assume an app without it. Measure your own device
(``os_proc_available_memory()``) and set ``budget_mb`` when it matters.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeviceProfile", "PROFILES", "get_profile"]


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    #: Memory one foreground app may use before it is killed (MB).
    limit_mb: int
    #: Physical RAM of the device (MB).
    ram_mb: int
    #: Where the number comes from.
    source: str


_SO = "stackoverflow.com/a/15200855"
PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("iphone-6s", 1396, 2048, f"{_SO}: iPhone6s 1396MB/2048MB (iOS 9.2)"),
        DeviceProfile("iphone-se", 1395, 2048, f"{_SO}: iPhoneSE 1395MB/2048MB (iOS 9.3)"),
        DeviceProfile("iphone-7", 1395, 2048, f"{_SO}: iPhone7 1395/2048MB (iOS 10.2)"),
        DeviceProfile("iphone-7-plus", 2040, 3072, f"{_SO}: iPhone7+ 2040MB/3072MB (iOS 10.2.1)"),
        DeviceProfile("iphone-8", 1364, 1990, f"{_SO}: iPhone8 1364/1990MB (iOS 12.1)"),
        DeviceProfile("iphone-x", 1392, 2785, f"{_SO}: iPhone X 1392/2785 (iOS 11.2.1)"),
        DeviceProfile("iphone-xr", 1792, 2813, f"{_SO}: iPhone XR 1792/2813 (iOS 12.1)"),
        DeviceProfile("iphone-xs", 2040, 3754, f"{_SO}: iPhone XS 2040/3754 (iOS 12.1)"),
        DeviceProfile("iphone-xs-max", 2039, 3735, f"{_SO}: iPhone XS Max 2039/3735 (iOS 12.1)"),
        DeviceProfile("iphone-11", 2068, 3844, f"{_SO}: iPhone 11 2068/3844 (iOS 13.1.3)"),
        DeviceProfile("iphone-11-pro-max", 2067, 3740, f"{_SO}: iPhone 11 Pro Max 2067/3740 (iOS 13.2.3)"),
        # 4 GB devices measured at 54-55 % of RAM (iPhone XS, 11): the iPhone 12 and 13 have 4 GB.
        DeviceProfile("iphone-12", 2068, 3844, f"{_SO}: 4 GB devices crash at 54-55 % of RAM (as iPhone 11)"),
        # 6 GB devices at 81 % of RAM in the same summary: iPhone 12 Pro / 13 Pro / 14 / 15 have 6 GB.
        DeviceProfile("iphone-6gb", 4976, 6144, f"{_SO}: 6144MB devices crash at 81 % of RAM"),
    )
}


def get_profile(name: str) -> DeviceProfile:
    """The named profile; ``KeyError`` lists the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown memory profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
