"""The intake queue behind a seam: ``EventQueue`` and its SQS implementation."""

from dropbatch.queues.base import Delivery, EventQueue, manifest_keys_in_message
from dropbatch.queues.sqs import IntakeQueue, SqsEventQueue, ensure_intake_queue, find_queue_url

__all__ = [
    "Delivery",
    "EventQueue",
    "IntakeQueue",
    "SqsEventQueue",
    "ensure_intake_queue",
    "find_queue_url",
    "manifest_keys_in_message",
]
