"""An RTSP server on 127.0.0.1 for watch's tests: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0 with python3-gi), run by the system Python.

    /usr/bin/python3 rtsp_server.py PORT FRAMES_DIR FPS SECONDS

serves rtsp://127.0.0.1:PORT/cam: the JPEG frames of FRAMES_DIR (frame000.jpg, ... of one
size) as live H.264, looped, and exits by itself after SECONDS. Prints "ready" when serving.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port, folder, fps, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( multifilesrc location="{folder}/frame%03d.jpg" loop=true '
        f'caps="image/jpeg,framerate={fps}/1" ! jpegdec ! videoconvert ! '
        "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=5 ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print("cannot bind", flush=True)
        sys.exit(1)
    loop = GLib.MainLoop()
    GLib.timeout_add(int(seconds * 1000), loop.quit)
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
