"""nbdesk's own hook for PySide6.QtGui: PyInstaller's (which this replaces, being on the
spec's hookspath) collects every Qt plugin type that belongs to QtGui; this one drops the
plugins nbdesk has no use for *before* PyInstaller follows their library dependencies
(the GTK platform theme alone would bundle the build machine's GTK, cairo and friends).

Kept: the platforms xcb (X11), wayland, offscreen and minimal; the xdg-desktop-portal
theme; input contexts (compose key, IBus); the image formats JPEG, WebP, GIF, TIFF, ICO
and SVG (PNG and BMP are built into QtGui), the SVG icon engine for the desktop's icon
theme; xcb's GL integrations; Wayland's xdg-shell, decorations and EGL client buffers.
"""

import re

from PyInstaller.utils.hooks.qt import add_qt6_dependencies

DROPPED = re.compile(
    r"[\\/]plugins[\\/](?:"
    r"imageformats[\\/](?:lib)?q(?:pdf|tga|wbmp|icns)"
    r"|egldeviceintegrations[\\/]"
    r"|generic[\\/]"
    r"|platforms[\\/](?:lib)?q(?:eglfs|linuxfb|vnc|vkkhrdisplay|minimalegl)"
    r"|platformthemes[\\/](?:lib)?qgtk3"
    r"|wayland-shell-integration[\\/](?:lib)?(?:fullscreen-shell|ivi-shell|qt-shell|wl-shell)"
    r"|wayland-graphics-integration-client[\\/](?:lib)?"
    r"(?:dmabuf-server|drm-egl-server|shm-emulation-server|vulkan-server)"
    r")"
)

hiddenimports, binaries, datas = add_qt6_dependencies(__file__)
binaries = [b for b in binaries if not DROPPED.search(b[0])]
# Qt's translations: nbdesk's own text is English only.
datas = [d for d in datas if not re.search(r"[\\/]translations[\\/]?", d[1] + "/")]
