"""Login throttling for the form logins (admin, playground), on django-axes.

Axes counts failed attempts per username and client address and refuses further attempts for the
cool-off period (GATEWAY_LOGIN_FAILURE_LIMIT, GATEWAY_LOGIN_COOLOFF_MINUTES). Its backend insists on
the request; a login without one (`Client.login`, code calling `authenticate()` directly) comes from
inside the process, not from a client with an address, and is passed on to the next backend.
"""

from axes.backends import AxesStandaloneBackend


class LoginThrottleBackend(AxesStandaloneBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
