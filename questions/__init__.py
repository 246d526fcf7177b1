"""Questions: written consultations, answered in text (issue 16, API.md v1.1).

`questions.service` holds the use cases (ask, answer, cancel, expire, list, review) and their SQL,
`questions.keys` the job ids and ledger keys; the timers are in workers/questions.py. Only this
package writes the `questions` table.
"""
