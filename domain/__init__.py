"""The domain: ORM, sessions, services, the job state machine and the control loop.

The API, the control process and the prep worker import it; node workers and the trainer
never do (it holds database access).
"""
