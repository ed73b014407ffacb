"""`hxp status`: the whole deployment's state, seen from the controller.

- :mod:`.probe`: the stdlib-only script each host runs (units, skipped markers, local HTTP).
- :mod:`.targets`: what to look at on each host, from the validated config and its plan.
- :mod:`.collect`: one SSH connection per host, all hosts at once, with Ansible's settings.
- :mod:`.verdict`: the answers against the expectations: healthy, or every reason it is not.
"""
