"""The intake queue behind a seam: ``EventQueue`` and its SQS implementation."""

from dropbatch.queues.base import Delivery, EventQueue, Manifested, manifests_in_message
from dropbatch.queues.sqs import IntakeQueue, SqsEventQueue, ensure_intake_queue, find_queue_url

__all__ = [
    "Delivery",
    "EventQueue",
    "IntakeQueue",
    "Manifested",
    "SqsEventQueue",
    "ensure_intake_queue",
    "find_queue_url",
    "manifests_in_message",
]
