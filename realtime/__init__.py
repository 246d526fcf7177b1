"""The real-time layer: python-socketio for chat, presence and WebRTC signalling."""
