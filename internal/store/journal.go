package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"banger/internal/api"
)

// JournalEntry is one recorded undo (or roll-forward) of a multi-step
// operation, written before the step it undoes acts. An operation's
// entries are removed together when it ends (done or rolled back in
// memory); what is left at start-up belongs to operations a daemon that
// died never finished. Action is JSON the daemon owns.
type JournalEntry struct {
	OpID      string
	Seq       int
	OpKind    string
	Target    string
	Step      string
	Action    string
	CreatedAt time.Time
}

// JournalAppend records e (CreatedAt set to now when zero).
func (s *Store) JournalAppend(ctx context.Context, e JournalEntry) error {
	if e.OpID == "" || e.OpKind == "" {
		return api.Errorf(api.CodeBadRequest, "journal entry without an operation id or kind")
	}
	if !json.Valid([]byte(e.Action)) {
		return api.Errorf(api.CodeBadRequest, "journal entry %s/%d: action is not valid JSON", e.OpID, e.Seq)
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = s.timestamp()
	}
	_, err := s.exec(ctx, `INSERT INTO journal (op_id, seq, op_kind, target, step, action, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		e.OpID, e.Seq, e.OpKind, e.Target, e.Step, e.Action, formatTime(e.CreatedAt))
	if uniqueViolation(err) != "" {
		return alreadyExists("journal entry", fmt.Sprintf("%s/%d", e.OpID, e.Seq))
	}
	if err != nil {
		return fmt.Errorf("record journal entry %s/%d: %w", e.OpID, e.Seq, err)
	}
	return nil
}

// Journal is every recorded entry, by operation (oldest first) and step
// order.
func (s *Store) Journal(ctx context.Context) ([]JournalEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT op_id, seq, op_kind, target, step, action, created_at FROM journal
		ORDER BY (SELECT min(j2.created_at) FROM journal j2 WHERE j2.op_id = journal.op_id), op_id, seq`)
	if err != nil {
		return nil, fmt.Errorf("read the journal: %w", err)
	}
	defer rows.Close()
	var out []JournalEntry
	for rows.Next() {
		var e JournalEntry
		var created string
		if err := rows.Scan(&e.OpID, &e.Seq, &e.OpKind, &e.Target, &e.Step, &e.Action, &created); err != nil {
			return nil, fmt.Errorf("read the journal: %w", err)
		}
		if e.CreatedAt, err = parseTime(created); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// JournalFinish removes every entry of the operation opID (none is fine).
func (s *Store) JournalFinish(ctx context.Context, opID string) error {
	if _, err := s.exec(ctx, `DELETE FROM journal WHERE op_id = ?`, opID); err != nil {
		return fmt.Errorf("finish journal of operation %s: %w", opID, err)
	}
	return nil
}
