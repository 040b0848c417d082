package keeper

import "container/list"

// Value is a value the keeper holds under its key.
type Value struct {
	Key   string
	Value []byte
}

// values are the keeper's values, bounded by MaxValues: the one put longest ago goes first.
// The zero value is empty and ready.
type values struct {
	byKey map[string]*list.Element // of *Value, in order
	order list.List                // the most recently put at the back
}

func (vs *values) put(key string, v []byte) {
	if vs.byKey == nil {
		vs.byKey = map[string]*list.Element{}
	}
	vs.delete(key)
	vs.byKey[key] = vs.order.PushBack(&Value{Key: key, Value: v})
	for vs.order.Len() > MaxValues {
		vs.delete(vs.order.Front().Value.(*Value).Key)
	}
}

func (vs *values) delete(key string) {
	e, ok := vs.byKey[key]
	if !ok {
		return
	}
	v := vs.order.Remove(e).(*Value)
	clear(v.Value) // the keeper's copy; what the runtime copied elsewhere is beyond reach
	delete(vs.byKey, key)
}

func (vs *values) clear() {
	for k := range vs.byKey {
		vs.delete(k)
	}
}

// all returns the values, the one put longest ago first; the slices are the keeper's.
func (vs *values) all() []Value {
	out := make([]Value, 0, vs.order.Len())
	for e := vs.order.Front(); e != nil; e = e.Next() {
		out = append(out, *e.Value.(*Value))
	}
	return out
}
