"""Sign-in: OTP codes, access and refresh tokens, Cognito mode, and the one authenticator that the
REST API and the Socket.IO layer both use."""
